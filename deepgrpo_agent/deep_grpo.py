"""DEEP-GRPO (Guo et al., arXiv 2602.14169): dense resampling from recoverable pivots of failed rollouts.

The trainer is GRPO's with two stages overridden: :meth:`DeepGRPOTrainer.collect` adds, after the
root rollouts, ``branches_per_pivot`` continuations from ``pivots_per_trajectory`` pivots of every
failed root (reward <= ``failure_threshold``), restored through ``reset_to`` and generated with the
engine's branching primitive; :meth:`DeepGRPOTrainer.compute_advantages` makes the branches the
*local* stream (advantage against their K siblings only, prefix gradient-masked), which
:meth:`stream_weights` weighs by lambda (docs/methods.md §2).

Deviations from the paper (docs/methods.md §2):
- KL: the local stream's k3 term is multiplied by lambda like its policy term (the later release;
  the first paper code did not).
- ``min_branch_samples`` defaults to 0 (the paper code skipped the local stream below 128 surviving
  branch samples, for batches of 512 roots); set it to 128 to reproduce.
- P_phi is fitted with Newton steps in numpy (same objective as scikit-learn's lbfgs with C = 1).
- Branches cut by the env's response budget are scored 0 (``truncated_is_failure``), as in the paper;
  root rollouts are scored as GRPO scores them unless ``truncated_roots_fail`` (the paper's rule).
- Sentence segments end after any token containing '.' unless ``sentence_split='bare'`` (the paper's
  bare '.' token); P_phi is refit once per step, after the step's branches, once more than
  ``phi_min_per_class`` pivots of each class (and more than ``phi_min_total`` in all) are buffered.
  The authors' code refits before every failed chain's pivot choice, asynchronously interleaved with
  other chains' branches; that cadence is not reproduced (docs/comparisons.md, "Deviations").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.pivot_utility import PIVOT_UTILITIES, PivotSelector, candidate_features
from deepgrpo_agent.pivots import (
    DEPTH_HIST_KEYS,
    SEGMENT_MARKERS,
    Recoverability,
    boundary_table,
    candidates,
    depth_histogram,
    segment_ends,
)
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_agent.samples import GLOBAL_STREAM, Rollouts, TrainSamples
from deepgrpo_agent.trainer import GRPOTrainer
from deepgrpo_env.state import EnvState

LOCAL_STREAM = 1
"""Stream id of branch rollouts (the local pivot groups)."""
PIVOT_RNG_SALT = 17
"""The pivot generator is seeded ``[config.seed, PIVOT_RNG_SALT]``: independent of the run's other streams."""


@dataclass
class DeepGRPOConfig(GRPOConfig):
    """GRPOConfig plus DEEP-GRPO's own fields (defaults: the paper's p1b8, gamma = 2, lambda = 1)."""

    pivots_per_trajectory: int = 1
    """p: pivots drawn (without replacement) per failed root rollout; 0 turns DEEP-GRPO into GRPO."""
    branches_per_pivot: int = 8
    """K: continuations sampled from each pivot (the local group size)."""
    depth_bias_gamma: float = 2.0
    """gamma in Q(i) ~ P_phi(r_i) * r_i^gamma; 0 with constant P_phi is uniform, very negative is root-only."""
    pivot_sampling: Literal["utility", "uniform"] = "utility"
    """'utility' draws pivots from Q(i); 'uniform' ignores depth and P_phi (the random-pivot ablation)."""
    pivot_utility: str = "paper"
    """Where pivots go (deepgrpo_agent/pivot_utility.py, docs/pivot_utility.md): 'paper' (Q ~ P_phi(r) r^gamma), 'uniform', 'root', 'surprisal', 'entropy' or 'learned'; `pivot_sampling='uniform'` wins over it."""
    local_loss_weight: float = 1.0
    """lambda: weight of the local (branch) stream in L = main + lambda * local."""
    segment: Literal["sentence", "line", "tokens"] = "sentence"
    """Candidate positions: after each '.' token ('sentence', the paper's default), after each newline ('line': one step per line, as in Arithmetic-v0) or every `segment_tokens`."""
    segment_tokens: int = 100
    """Tokens per segment when `segment` is 'tokens' (the paper tried 50, 100, 200)."""
    failure_threshold: float = 0.0
    """Root rollouts with reward <= this are failed and eligible for pivots."""
    expand_all: bool = False
    """Also expand successful root rollouts (the 'expand-all' ablation)."""
    drop_zero_advantage: bool = True
    """Drop samples with |A| < 1e-8 from both streams (paper code); off makes p = 0 identical to GRPO."""
    min_branch_samples: int = 0
    """Skip the local stream in a step when fewer branch samples survive (paper code: 128)."""
    truncated_is_failure: bool = True
    """Score branches that hit the response budget as 0 (the paper's rule)."""
    phi_buffer_size: int = 10_000
    """FIFO capacity of the (r, any-branch-succeeded) buffer that P_phi is fitted on."""
    phi_min_per_class: int = 10
    """P_phi is fitted once the buffer holds more than this many pivots of each class (any branch succeeded / none); before that P_phi = 1. 10 is docs/methods.md's rule; 0 fits as soon as both classes occur."""
    phi_min_total: int = 0
    """...and more than this many pivots in all. The authors' code fits once the buffer holds more than 10 pivots with both classes present: `phi_min_per_class=0, phi_min_total=10` (`deep-grpo-paper`)."""
    sentence_split: Literal["contains", "bare"] = "contains"
    """With segment='sentence': end a segment after every token whose text contains '.' ('contains', e.g. inside "3.50") or only after the bare '.' token ('bare', the paper's split)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            ("pivots_per_trajectory", self.pivots_per_trajectory >= 0, ">= 0"),
            ("branches_per_pivot", self.branches_per_pivot >= 2, ">= 2 (a local group needs siblings)"),
            ("local_loss_weight", self.local_loss_weight >= 0, ">= 0"),
            ("segment_tokens", self.segment_tokens >= 1, ">= 1"),
            ("min_branch_samples", self.min_branch_samples >= 0, ">= 0"),
            ("phi_buffer_size", self.phi_buffer_size >= 1, ">= 1"),
            ("phi_min_per_class", self.phi_min_per_class >= 0, ">= 0"),
            ("phi_min_total", self.phi_min_total >= 0, ">= 0"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"Expected `{name}` {want}, got {getattr(self, name)!r}.")
        if self.segment not in ("sentence", "line", "tokens"):
            raise ValueError(f"Expected `segment` in ('sentence', 'line', 'tokens'), got {self.segment!r}.")
        if self.pivot_utility not in PIVOT_UTILITIES:
            raise ValueError(f"Expected `pivot_utility` in {PIVOT_UTILITIES}, got {self.pivot_utility!r}.")
        if self.pivot_sampling not in ("utility", "uniform"):
            raise ValueError(f"Expected `pivot_sampling` in ('utility', 'uniform'), got {self.pivot_sampling!r}.")


@dataclass
class PivotRollouts(Rollouts):
    """GRPO's rollouts plus the step's pivots and the branches sampled from them (K per pivot, in order)."""

    pivots: list[Pivot] = field(default_factory=list)
    branches: RolloutBatch | None = None


@dataclass(frozen=True)
class Pivot:
    """One chosen pivot: the root row it came from, its depth and normalized depth, and its state."""

    row: int
    depth: int
    ratio: float
    state: EnvState
    features: tuple[float, ...] = ()
    """The candidate's (r, surprisal, entropy, segment index) (deepgrpo_agent/pivot_utility.py)."""


class DeepGRPOTrainer(GRPOTrainer):
    """GRPO with DEEP-GRPO's pivot branching (see the module docstring)."""

    algo = "deep-grpo"
    config: DeepGRPOConfig

    def __init__(self, config: DeepGRPOConfig, **kwargs: Any) -> None:
        if not isinstance(config, DeepGRPOConfig):
            raise TypeError(f"Expected a DeepGRPOConfig, got {type(config).__name__}.")
        # Strategy state exists before GRPOTrainer.__init__, which may resume it from a checkpoint.
        self.phi = Recoverability(capacity=config.phi_buffer_size, min_per_class=config.phi_min_per_class,
                                  min_total=config.phi_min_total)
        self.pivot_rng = np.random.default_rng([config.seed, PIVOT_RNG_SALT])
        utility_name = "uniform" if config.pivot_sampling == "uniform" else config.pivot_utility
        self.selector = PivotSelector(utility_name, config.depth_bias_gamma, self.phi, config.phi_buffer_size)
        super().__init__(config, **kwargs)
        self.boundary_ids = (
            None if config.segment == "tokens"
            else boundary_table(self.env.codec.decode, self.envs.vocab_size, config.segment,
                                bare=config.sentence_split == "bare" and config.segment == "sentence")
        )
        if self.boundary_ids is not None and not self.boundary_ids.any():
            raise ValueError(
                f"Expected `segment={config.segment!r}` to find tokens containing {SEGMENT_MARKERS[config.segment]!r} "
                f"in the vocabulary of {config.env_id}, got none: every pivot would be the root. Use "
                "segment='line' (one step per line, e.g. Arithmetic-v0) or segment='tokens' with `segment_tokens`."
            )

    def stream_weights(self) -> dict[int, float]:
        return {GLOBAL_STREAM: 1.0, LOCAL_STREAM: self.config.local_loss_weight}

    # -- the overridden stages --------------------------------------------------------------------
    def collect(self) -> Rollouts:
        """Roots (GRPO), then K branches from each pivot of the failed roots."""
        roots = super().collect()
        pivots = [p for batch in roots.roots for p in self.choose_pivots(batch)]
        roots.metrics.update(self._pivot_metrics(pivots))
        branches = self.expand(pivots) if pivots else None
        return PivotRollouts(roots.roots, roots.signal, roots.metrics, pivots, branches)

    def compute_advantages(self, rollouts: Rollouts) -> tuple[TrainSamples, dict[str, float]]:
        """GRPO's root samples (global stream) + the branches' local stream, zero advantages dropped."""
        if not isinstance(rollouts, PivotRollouts):
            raise TypeError(f"Expected the PivotRollouts of DeepGRPOTrainer.collect, got {type(rollouts).__name__}.")
        cfg = self.config
        roots, metrics = super().compute_advantages(rollouts)
        local = TrainSamples.concat([])
        if rollouts.branches is not None:
            local, branch_metrics = self.local_samples(rollouts.pivots, rollouts.branches)
            metrics.update(branch_metrics)
        if cfg.drop_zero_advantage:
            roots = roots.select(np.abs(roots.advantages) >= 1e-8)
            local = local.select(np.abs(local.advantages) >= 1e-8)
        # The paper code skipped the local stream when too few branch samples survived the drop.
        use_local = len(local) > 0 and len(local) >= cfg.min_branch_samples
        metrics["pivot/local_stream_used"] = float(use_local)
        samples = TrainSamples.concat([roots, local] if use_local else [roots])
        for s, name in ((GLOBAL_STREAM, "global"), (LOCAL_STREAM, "local")):
            adv = samples.advantages[samples.streams == s]
            metrics[f"adv/{name}_count"] = float(adv.size)
            metrics[f"adv/{name}_abs_mean"] = float(np.abs(adv).mean()) if adv.size else 0.0
        return samples, metrics

    def choose_pivots(self, batch: RolloutBatch) -> list[Pivot]:
        """Pivots of one root batch: p per eligible (failed, or any with expand_all) trajectory."""
        cfg = self.config
        if cfg.pivots_per_trajectory == 0:
            return []
        rewards = np.nan_to_num(batch.rewards, nan=0.0)
        eligible = np.ones(len(batch), dtype=bool) if cfg.expand_all else rewards <= cfg.failure_threshold
        max_depth = self.env.limits.max_response_tokens
        out: list[Pivot] = []
        for row in np.flatnonzero(eligible):
            response = np.asarray(batch.states[row].response_ids)
            ends = segment_ends(response, mode=cfg.segment, boundary_ids=self.boundary_ids,
                                segment_tokens=cfg.segment_tokens)
            if ends.size == 0:
                continue
            cand = candidates(ends, max_depth=max_depth)
            if cand.depths.size == 0:
                continue
            feats = candidate_features(cand, ends, batch.logprobs[row], batch.entropies[row], strict=False)
            matrix = feats.matrix()
            for i in self.selector.choose(feats, cfg.pivots_per_trajectory, self.pivot_rng):
                depth = int(cand.depths[i])
                out.append(Pivot(int(row), depth, float(cand.ratios[i]), batch.prefix_state(int(row), depth),
                                 tuple(float(x) for x in matrix[i])))
        return out

    def expand(self, pivots: list[Pivot]) -> RolloutBatch:
        """K continuations of every pivot, restored with reset_to and prefilled once per pivot."""
        return self.branch([p.state for p in pivots], self.config.branches_per_pivot,
                           temperatures=self.branch_temperatures(pivots))

    def branch_temperatures(self, pivots: list[Pivot]) -> list[float] | None:
        """Sampling temperature of each pivot's branches; None = ``config.temperature`` (DEEP-ERPO overrides)."""
        return None

    def local_samples(self, pivots: list[Pivot], branches: RolloutBatch) -> tuple[TrainSamples, dict[str, float]]:
        """Local-stream samples: advantage against the K siblings of the same pivot (no std)."""
        cfg = self.config
        k = cfg.branches_per_pivot
        rewards = np.nan_to_num(branches.rewards, nan=0.0).astype(np.float64)
        if cfg.truncated_is_failure:
            rewards = np.where(branches.truncated, 0.0, rewards)
        grouped = rewards.reshape(len(pivots), k)
        adv = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
        succeeded: np.ndarray = np.asarray((grouped > cfg.failure_threshold).any(axis=1))
        self.phi.add([p.ratio for p in pivots], [bool(x) for x in succeeded])
        samples = TrainSamples.from_batch(branches, adv.astype(np.float32), LOCAL_STREAM)
        lengths = np.array([len(x) for x in branches.new_ids])
        entropies = np.concatenate(branches.entropies) if branches.entropies else np.zeros(0)
        metrics = {
            "pivot/branch_success_rate": float((grouped > cfg.failure_threshold).mean()),
            "pivot/unrecoverable_fraction": float((~succeeded).mean()),
            "pivot/branch_response_length": float(lengths.mean()),
            "pivot/branch_entropy": float(entropies.mean()) if entropies.size else float("nan"),
            "pivot/branch_generated_tokens": float(branches.generated_tokens),
            "pivot/branch_prefilled_tokens": float(branches.prefilled_tokens),
            "perf/branch_prefill_s": float(branches.prefill_s),
            "perf/branch_decode_s": float(branches.decode_s),
        }
        feats = np.array([p.features for p in pivots], dtype=np.float64).reshape(len(pivots), -1)
        metrics.update(self.selector.observe(feats, grouped, branches.generated_tokens))
        return samples, metrics

    def _pivot_metrics(self, pivots: list[Pivot]) -> dict[str, float]:
        ratios = np.array([p.ratio for p in pivots])
        hist = depth_histogram([p.depth for p in pivots], ratios)
        out = {
            "pivot/count": float(len(pivots)),
            "pivot/depth_tokens_mean": float(np.mean([p.depth for p in pivots])) if pivots else 0.0,
            "pivot/ratio_mean": float(ratios.mean()) if pivots else 0.0,
            "pivot/root_fraction": float(np.mean([p.depth == 0 for p in pivots])) if pivots else 0.0,
            "pivot/phi_w": float(self.phi.w) if self.phi.w is not None else float("nan"),
            "pivot/phi_b": float(self.phi.b) if self.phi.b is not None else float("nan"),
            "pivot/phi_buffer": float(len(self.phi.buffer)),
        }
        out.update({f"pivot/{name}": float(h) for name, h in zip(DEPTH_HIST_KEYS, hist)})
        return out

    # -- checkpointed strategy state --------------------------------------------------------------
    def strategy_state(self) -> dict[str, Any]:
        return {"phi": self.phi.state_dict(), "pivot_rng": self.pivot_rng.bit_generator.state,
                "selector": self.selector.state_dict()}

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        self.phi.load_state_dict(state["phi"])
        self.pivot_rng.bit_generator.state = state["pivot_rng"]
        if "selector" in state:  # checkpoints written before pluggable utilities have none
            self.selector.load_state_dict(state["selector"])


__all__ = ["LOCAL_STREAM", "PIVOT_RNG_SALT", "DeepGRPOConfig", "DeepGRPOTrainer", "Pivot", "PivotRollouts"]
