"""DEEP-GRPO pivot selection: candidate positions, normalized depth, recoverability and utility.

Everything here follows docs/methods.md §2 ("Candidate positions", "Recoverability P_phi",
"Pivot distribution"). Functions are pure; :class:`Recoverability` holds the online buffer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

SegmentMode = Literal["sentence", "line", "tokens"]


@dataclass(frozen=True)
class Candidates:
    """Pivot candidates of one trajectory.

    Attributes:
        depths: (C,) response-token depth of each candidate (0 = the root, i.e. the bare prompt).
        ratios: (C,) normalized depth r_i = (i + 1) / T, T = number of segments + 1.
    """

    depths: npt.NDArray[np.int64]
    ratios: npt.NDArray[np.float64]


def segment_ends(
    response: npt.NDArray[np.int64],
    *,
    mode: SegmentMode,
    boundary_ids: npt.NDArray[np.bool_] | None = None,
    segment_tokens: int = 100,
) -> npt.NDArray[np.int64]:
    """Depths (exclusive token counts) at which each segment of ``response`` ends.

    ``sentence`` / ``line``: a segment ends after every token whose text contains "." / a newline
    (``boundary_ids`` is that (vocab,) bool table, see :func:`boundary_table`); the tail after the
    last boundary is the final segment. ``tokens``: every ``segment_tokens`` tokens. The last entry
    is always ``len(response)``.
    """
    n = int(response.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if mode in ("sentence", "line"):
        if boundary_ids is None:
            raise ValueError(f"{mode!r} segmentation needs `boundary_ids`, a (vocab,) bool table of the tokens "
                             "that end a segment (see `boundary_table`).")
        ends = np.flatnonzero(boundary_ids[response]) + 1
    elif mode == "tokens":
        if segment_tokens < 1:
            raise ValueError(f"Expected `segment_tokens` >= 1, got {segment_tokens}.")
        ends = np.arange(segment_tokens, n + 1, segment_tokens)
    else:
        raise ValueError(f"Expected segment mode 'sentence', 'line' or 'tokens', got {mode!r}.")
    ends = ends[ends < n]
    return np.concatenate([ends, [n]]).astype(np.int64)


def candidates(ends: npt.NDArray[np.int64], *, max_depth: int) -> Candidates:
    """The root plus every non-final segment end whose prefix leaves room to generate (< ``max_depth``).

    With n segments, T = n + 1 and candidate index i (0 = root, i = end of segment i) has
    r_i = (i + 1) / T (docs/methods.md §2).
    """
    n = int(ends.shape[0])
    t = n + 1
    depths = np.concatenate([[0], ends[:-1]]).astype(np.int64)  # root + ends of segments 1..n-1
    ratios = (np.arange(depths.shape[0]) + 1.0) / t
    keep = depths < max_depth
    return Candidates(depths[keep], ratios[keep])


def utility(ratios: npt.NDArray[np.float64], p_success: npt.NDArray[np.float64], gamma: float) -> npt.NDArray[np.float64]:
    """Q(i) proportional to P_phi(r_i) * r_i^gamma, normalized (computed in log space).

    gamma -> -inf puts all mass on the shallowest candidate (the root); gamma = 0 with a constant
    P_phi is uniform.
    """
    logq = np.log(np.clip(p_success, 1e-12, None)) + gamma * np.log(ratios)
    logq -= logq.max()
    q = np.exp(logq)
    out: npt.NDArray[np.float64] = q / q.sum()
    return out


def sample_pivots(
    q: npt.NDArray[np.float64], count: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """``count`` distinct candidate indices drawn from ``q`` without replacement (fewer if short)."""
    count = min(count, int((q > 0).sum()))
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.choice(q.shape[0], size=count, replace=False, p=q)).astype(np.int64)


class Recoverability:
    """P_phi(success | r) = sigmoid(w r + b): L2-regularized logistic regression on a FIFO buffer.

    Refit (a few Newton steps, intercept unpenalized, ``0.5 w^2 + C * sum logloss`` like
    scikit-learn's lbfgs solver) whenever the buffer holds more than ``min_per_class`` samples of
    both classes and more than ``min_total`` in all; before that P_phi = 1 everywhere (docs/methods.md §2).
    """

    def __init__(self, capacity: int = 10_000, c: float = 1.0, min_per_class: int = 10, min_total: int = 0) -> None:
        if capacity < 1 or c <= 0:
            raise ValueError(f"Expected capacity >= 1 and C > 0, got {capacity} and {c}.")
        self.buffer: deque[tuple[float, float]] = deque(maxlen=capacity)
        self.c = c
        self.min_per_class = min_per_class
        self.min_total = min_total
        self.w: float | None = None
        self.b: float | None = None

    @property
    def fitted(self) -> bool:
        """Whether a fit exists (else P_phi = 1)."""
        return self.w is not None

    def add(self, ratios: Sequence[float], successes: Sequence[bool]) -> None:
        """Appends (r, y) pairs and refits when both classes have enough samples."""
        self.buffer.extend((float(r), float(bool(y))) for r, y in zip(ratios, successes))
        data = np.asarray(self.buffer, dtype=np.float64).reshape(-1, 2)
        positives = int(data[:, 1].sum())
        enough = data.shape[0] > self.min_total
        if enough and positives > self.min_per_class and data.shape[0] - positives > self.min_per_class:
            self.w, self.b = fit_logistic(data[:, 0], data[:, 1], c=self.c, init=(self.w or 0.0, self.b or 0.0))

    def __call__(self, ratios: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self.w is None or self.b is None:
            return np.ones_like(ratios, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-(self.w * ratios + self.b)))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": list(self.buffer), "w": self.w, "b": self.b, "capacity": self.buffer.maxlen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = deque(state["buffer"], maxlen=state["capacity"])
        self.w, self.b = state["w"], state["b"]


def fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, c: float = 1.0,
    init: tuple[float, float] = (0.0, 0.0), iters: int = 50,
) -> tuple[float, float]:
    """Minimizes ``0.5 w^2 + c * sum_i logloss(sigmoid(w x_i + b), y_i)`` by Newton's method."""
    theta = np.array(init, dtype=np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (N, 2)
    reg = np.diag([1.0, 0.0])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(design @ theta)))
        grad = reg @ theta + c * design.T @ (p - y)
        hess = reg + c * (design.T * (p * (1 - p))) @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(theta[0]), float(theta[1])


SEGMENT_MARKERS = {"sentence": ".", "line": "\n"}
"""The text whose tokens end a segment in each boundary-based segment mode."""


def boundary_table(decode: Any, vocab_size: int, mode: str = "sentence", *, bare: bool = False) -> npt.NDArray[np.bool_]:
    """(vocab,) bool: which token ids decode to text containing the ``mode``'s marker ('.' or newline);
    with ``bare``, only the tokens whose text *is* the marker (the paper's split on the '.' token)."""
    marker = SEGMENT_MARKERS[mode]
    if bare:
        return np.array([decode([i]) == marker for i in range(vocab_size)], dtype=bool)
    return np.array([marker in decode([i]) for i in range(vocab_size)], dtype=bool)


DEPTH_HIST_KEYS = ("depth_hist_root", *(f"ratio_hist_{i}" for i in range(5)))
"""Metric names of :func:`depth_histogram`'s bins: root pivots, then r in (0, 0.2], ..., (0.8, 1.0]."""


def depth_histogram(depths: Sequence[int], ratios: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(6,) counts: pivots at the root (depth 0, whatever their r = 1/T), then the others in the
    right-closed bins (0, 0.2], (0.2, 0.4], ..., (0.8, 1.0] of r.

    Right-closed with a tolerance, so that r = 0.4 = 2/5 and r = 0.6 = 3/5 land in the bins that end at
    them whatever their floating-point rounding (``np.histogram``'s half-open bins put 2/5 and 3/5 into the
    same bin, and a root pivot in whichever bin 1/T falls into).
    """
    out = np.zeros(6)
    d = np.asarray(depths, dtype=np.int64)
    r = np.asarray(ratios, dtype=np.float64)
    out[0] = float((d == 0).sum())
    deep = r[d > 0]
    if deep.size:
        idx = np.clip(np.ceil(deep * 5 - 1e-9).astype(np.int64) - 1, 0, 4)
        out[1:] = np.bincount(idx, minlength=5)
    return out
