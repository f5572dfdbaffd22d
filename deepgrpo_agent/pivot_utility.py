"""Pluggable pivot utilities for DEEP-GRPO: which candidate of a failed trajectory to branch from.

DEEP-GRPO draws pivots from Q(i) ∝ P_phi(r_i) · r_i^gamma (docs/methods.md §2, "the paper's"
utility). The paper's authors call the depth-only P_phi a heuristic proxy; this module makes the
utility a choice (``DeepGRPOConfig.pivot_utility``), each with its cost note (:data:`COST_NOTES`)
and the same metrics (:meth:`PivotSelector.observe`), so that they can be compared at equal
optimizer steps (docs/pivot_utility.md):

- ``paper``: Q(i) ∝ P_phi(r_i) · r_i^gamma, the default (unchanged behaviour, same RNG draws).
- ``uniform``: Q(i) = 1 / C over the C candidates, root included (the paper's random-pivot ablation).
- ``root``: always the root (K more fresh samples of the prompt, trained as a local group).
- ``surprisal``: just before the segment holding the least likely sampled token (largest
  -log pi(y_t)); the p top segments when p > 1, ties broken at random.
- ``entropy``: the boundary where the sampling distribution of the next token has the largest
  entropy (the first token of the following segment).
- ``learned``: Q(i) ∝ P_psi(mixed | x_i), a logistic regression over x = (r, surprisal of the
  following segment, boundary entropy, segment index), fitted online on whether a pivot's K
  branches had mixed outcomes (a non-zero local advantage); the paper's utility until both classes
  have more than ``min_per_class`` samples.

Every feature comes from what the root rollout already recorded (sampled-token log-probs and
entropies), so no utility costs an extra forward pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from deepgrpo_agent.pivots import Candidates, Recoverability, sample_pivots, utility

PivotUtilityName = Literal["paper", "uniform", "root", "surprisal", "entropy", "learned"]
PIVOT_UTILITIES: tuple[str, ...] = ("paper", "uniform", "root", "surprisal", "entropy", "learned")
"""The values ``DeepGRPOConfig.pivot_utility`` accepts."""

COST_NOTES: dict[str, str] = {
    "paper": "O(C) per trajectory; one 2-parameter logistic refit per step on <= 10k (r, y) pairs",
    "uniform": "O(C) per trajectory, nothing fitted",
    "root": "O(1); every branch regenerates the whole response (the most branch tokens per pivot)",
    "surprisal": "O(response length) per trajectory over the log-probs the rollout recorded; nothing fitted",
    "entropy": "O(C) per trajectory over the entropies the rollout recorded; nothing fitted",
    "learned": "O(C) per trajectory; one 5-parameter logistic refit per step on <= 10k (x, mixed) pairs",
}
"""Compute cost of each utility (on top of the branches it causes; see docs/pivot_utility.md for the
measured mixed-outcome pivots per branch token)."""

FEATURE_NAMES = ("ratio", "surprisal", "entropy", "segment_index")
"""The columns of :meth:`PivotFeatures.matrix` (the learned utility's inputs)."""


@dataclass(frozen=True)
class PivotFeatures:
    """Per-candidate features of one trajectory (all (C,) float64).

    Attributes:
        ratios: normalized depth r_i = (i + 1) / T (docs/methods.md §2).
        surprisal: max over the tokens of the segment that starts at candidate i of -log pi(y_t).
        entropy: entropy of the sampling distribution at the first token after candidate i.
        segment_index: i, the number of segments before the candidate (0 = the root).
    """

    ratios: npt.NDArray[np.float64]
    surprisal: npt.NDArray[np.float64]
    entropy: npt.NDArray[np.float64]
    segment_index: npt.NDArray[np.float64]

    def matrix(self) -> npt.NDArray[np.float64]:
        """(C, 4) in :data:`FEATURE_NAMES` order."""
        return np.stack([self.ratios, self.surprisal, self.entropy, self.segment_index], axis=1)


def candidate_features(
    cand: Candidates,
    ends: npt.NDArray[np.int64],
    logprobs: npt.NDArray[np.floating],
    entropies: npt.NDArray[np.floating],
    *,
    strict: bool = True,
) -> PivotFeatures:
    """Features of the candidates ``cand`` of a response with segment ends ``ends``.

    Candidate i sits at depth ``cand.depths[i]``; the segment that follows it spans
    ``[cand.depths[i], ends[i])`` (``ends`` as :func:`~deepgrpo_agent.pivots.segment_ends` returns).
    ``logprobs`` / ``entropies`` are the per-token sampling log-probs and entropies of the response.

    Raises:
        ValueError: If the arrays do not describe one response (lengths disagree) and ``strict``; with
            ``strict=False`` (the trainer: a wrapper may have rewritten the response) the missing
            values are 0, so the paper's utility, which reads only r, never fails on them.
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    ent = np.asarray(entropies, dtype=np.float64)
    n = int(ends[-1]) if ends.size else 0
    if not strict:
        lp, ent = _fit_length(lp, n), _fit_length(ent, n)
    if lp.shape != (n,) or ent.shape != (n,):
        raise ValueError(
            f"Expected one log-prob and one entropy per response token ({n}), got {lp.shape} and {ent.shape}; "
            "pass the root rollout's own `logprobs[row]` and `entropies[row]`."
        )
    c = int(cand.depths.shape[0])
    starts = cand.depths
    stops = ends[:c]
    surprisal = np.array([float(-lp[a:b].min()) if b > a else 0.0 for a, b in zip(starts, stops)])
    entropy = np.array([float(ent[a]) if a < n else 0.0 for a in starts])
    return PivotFeatures(cand.ratios.astype(np.float64), surprisal, entropy, np.arange(c, dtype=np.float64))


def _fit_length(x: npt.NDArray[np.float64], n: int) -> npt.NDArray[np.float64]:
    out = np.zeros(n)
    m = min(n, int(x.shape[0]))
    out[:m] = x[:m]
    return out


def _sigmoid(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """1 / (1 + e^-x) without overflow warnings: logits are clipped to +-500, where the value is 0 or 1 in float64 anyway."""
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))
    return out


def top_choice(scores: npt.NDArray[np.float64], count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """The ``count`` highest-scoring indices (sorted), ties at the cut broken uniformly at random.

    >>> top_choice(np.array([0.1, 0.9, 0.5]), 1, np.random.default_rng(0)).tolist()
    [1]
    """
    count = min(count, int(scores.shape[0]))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    cut = np.sort(scores)[::-1][count - 1]
    above = np.flatnonzero(scores > cut)
    tied = np.flatnonzero(scores == cut)
    extra = rng.choice(tied, size=count - above.size, replace=False) if count > above.size else tied[:0]
    return np.sort(np.concatenate([above, extra])).astype(np.int64)


class LearnedUtility:
    """P_psi(mixed | x) = sigmoid(w·z + b) with z the features standardized on the buffer.

    L2-regularized logistic regression (``0.5 |w|^2 + C · sum logloss``, intercept unpenalized,
    Newton steps, like :func:`~deepgrpo_agent.pivots.fit_logistic` in more dimensions) on a FIFO
    buffer of (features, mixed) pairs, refit after each :meth:`add` once both classes hold more than
    ``min_per_class`` samples; before that :attr:`fitted` is False.
    """

    def __init__(self, capacity: int = 10_000, c: float = 1.0, min_per_class: int = 10) -> None:
        if capacity < 1 or c <= 0:
            raise ValueError(f"Expected capacity >= 1 and C > 0, got {capacity} and {c}.")
        self.buffer: deque[tuple[float, ...]] = deque(maxlen=capacity)
        self.c = c
        self.min_per_class = min_per_class
        self.theta: npt.NDArray[np.float64] | None = None  # (d + 1,): weights, then the intercept
        self.mean = np.zeros(len(FEATURE_NAMES))
        self.scale = np.ones(len(FEATURE_NAMES))

    @property
    def fitted(self) -> bool:
        return self.theta is not None

    def add(self, features: npt.NDArray[np.float64], mixed: Sequence[bool]) -> None:
        """Appends rows of ``features`` (N, 4) with their labels and refits when both classes suffice."""
        for x, y in zip(np.asarray(features, dtype=np.float64), mixed):
            self.buffer.append((*map(float, x), float(bool(y))))
        data = np.asarray(self.buffer, dtype=np.float64).reshape(-1, len(FEATURE_NAMES) + 1)
        positives = int(data[:, -1].sum())
        if positives > self.min_per_class and data.shape[0] - positives > self.min_per_class:
            inputs, labels = data[:, :-1], data[:, -1]
            self.mean, self.scale = inputs.mean(axis=0), inputs.std(axis=0) + 1e-6
            self.theta = fit_logistic_nd((inputs - self.mean) / self.scale, labels, c=self.c, init=self.theta)

    def __call__(self, features: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """P(mixed | x) per row of ``features`` (N, 4); all 1 before the first fit."""
        if self.theta is None:
            return np.ones(features.shape[0])
        z = (features - self.mean) / self.scale
        out: npt.NDArray[np.float64] = _sigmoid(z @ self.theta[:-1] + self.theta[-1])
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [list(x) for x in self.buffer], "capacity": self.buffer.maxlen,
                "theta": None if self.theta is None else self.theta.tolist(),
                "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = deque((tuple(x) for x in state["buffer"]), maxlen=state["capacity"])
        self.theta = None if state["theta"] is None else np.asarray(state["theta"], dtype=np.float64)
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.scale = np.asarray(state["scale"], dtype=np.float64)


def fit_logistic_nd(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, c: float = 1.0,
    init: npt.NDArray[np.float64] | None = None, iters: int = 50,
) -> npt.NDArray[np.float64]:
    """Minimizes ``0.5 |w|^2 + c * sum_i logloss(sigmoid(w·x_i + b), y_i)`` by Newton's method; returns (w, b)."""
    n, d = x.shape
    design = np.concatenate([x, np.ones((n, 1))], axis=1)
    theta = np.zeros(d + 1) if init is None or init.shape != (d + 1,) else init.astype(np.float64).copy()
    reg = np.diag([1.0] * d + [0.0])
    for _ in range(iters):
        p = _sigmoid(design @ theta)
        grad = reg @ theta + c * design.T @ (p - y)
        hess = reg + c * (design.T * (p * (1 - p))) @ design + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return theta


class PivotSelector:
    """Chooses pivots with one named utility and keeps its metrics (and, for ``learned``, its model).

    Args:
        name: One of :data:`PIVOT_UTILITIES`.
        gamma: The paper utility's depth exponent (also ``learned``'s fallback before its first fit).
        phi: The paper's P_phi(r) (shared with the trainer, which feeds it).
        capacity: FIFO size of the learned utility's buffer.
    """

    def __init__(self, name: str, gamma: float, phi: Recoverability, capacity: int = 10_000) -> None:
        if name not in PIVOT_UTILITIES:
            raise ValueError(f"Expected `pivot_utility` in {PIVOT_UTILITIES}, got {name!r}.")
        self.name = name
        self.gamma = gamma
        self.phi = phi
        self.learned = LearnedUtility(capacity=capacity)

    def choose(self, feats: PivotFeatures, count: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Candidate indices (sorted, distinct, at most ``count``) of one trajectory."""
        c = int(feats.ratios.shape[0])
        if c == 0 or count <= 0:
            return np.zeros(0, dtype=np.int64)
        if self.name == "uniform":
            return sample_pivots(np.full(c, 1.0 / c), count, rng)
        if self.name == "root":
            return np.zeros(1, dtype=np.int64)
        if self.name == "surprisal":
            return top_choice(feats.surprisal, count, rng)
        if self.name == "entropy":
            return top_choice(feats.entropy, count, rng)
        if self.name == "learned" and self.learned.fitted:
            q = self.learned(feats.matrix())
            return sample_pivots(np.clip(q, 1e-12, None) / np.clip(q, 1e-12, None).sum(), count, rng)
        return sample_pivots(utility(feats.ratios, self.phi(feats.ratios), self.gamma), count, rng)

    def observe(
        self, feats: npt.NDArray[np.float64], grouped_rewards: npt.NDArray[np.float64], branch_tokens: int
    ) -> dict[str, float]:
        """Learns from one step's pivots and returns the utility's metrics.

        Args:
            feats: (P, 4) features of the step's pivots (rows of :meth:`PivotFeatures.matrix`).
            grouped_rewards: (P, K) branch rewards, nan already replaced.
            branch_tokens: Tokens generated by the step's branches.

        Returns:
            ``pivot/mixed_fraction`` (pivots with a non-zero local advantage), ``pivot/mixed_per_kilotoken``
            (mixed pivots per 1000 branch tokens: the cost model), and the chosen pivots' mean surprisal,
            entropy and segment index.
        """
        g = np.asarray(grouped_rewards, dtype=np.float64)
        mixed = (g.max(axis=1) - g.min(axis=1)) > 1e-8 if g.size else np.zeros(0, dtype=bool)
        if feats.shape[0] != mixed.shape[0]:
            raise ValueError(f"Expected one feature row per pivot ({mixed.shape[0]}), got {feats.shape[0]}.")
        if feats.shape[1:] != (len(FEATURE_NAMES),):  # pivots made without features (hand-built ones)
            feats = np.full((mixed.shape[0], len(FEATURE_NAMES)), np.nan)
        elif self.name == "learned" and mixed.size:
            self.learned.add(feats, mixed.tolist())
        out = {
            "pivot/mixed_fraction": float(mixed.mean()) if mixed.size else float("nan"),
            "pivot/mixed_per_kilotoken": 1000.0 * float(mixed.sum()) / max(branch_tokens, 1),
            "pivot/surprisal_mean": float(feats[:, 1].mean()) if feats.size else float("nan"),
            "pivot/boundary_entropy_mean": float(feats[:, 2].mean()) if feats.size else float("nan"),
            "pivot/segment_index_mean": float(feats[:, 3].mean()) if feats.size else float("nan"),
        }
        if self.name == "learned":
            out["pivot/learned_fitted"] = float(self.learned.fitted)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "learned": self.learned.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learned.load_state_dict(state["learned"])


__all__ = [
    "COST_NOTES",
    "FEATURE_NAMES",
    "PIVOT_UTILITIES",
    "LearnedUtility",
    "PivotFeatures",
    "PivotSelector",
    "PivotUtilityName",
    "candidate_features",
    "fit_logistic_nd",
    "top_choice",
]
