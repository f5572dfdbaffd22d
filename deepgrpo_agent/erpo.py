"""ERPO (arXiv 2511.04800): per-prompt sampling temperatures that rise on residual (all-correct) prompts.

A :class:`TemperatureTracker` remembers, per prompt (keyed by the problem's stable id), the outcome of
its recent visits and its current temperature. A prompt whose previous visit was all-correct is
sampled ``erpo_temperature_step`` hotter on its next visit (capped at ``erpo_max_temperature``); a
mixed or all-wrong visit sends it back toward the base temperature (``GRPOConfig.temperature``) by the
``erpo_reset`` rule. Optionally all-correct groups get a small negative pseudo-advantage
``-erpo_pseudo_advantage`` instead of 0 (docs/methods.md §3).

:class:`ERPOTrainer` is GRPO's trainer with three hooks overridden:
:meth:`ERPOTrainer.root_temperatures` (how root groups are sampled), :meth:`ERPOTrainer.observe_roots`
(the tracker update, as each root batch arrives) and :meth:`ERPOTrainer.root_advantages` (the
pseudo-advantage); :class:`DeepERPOTrainer` is the same on top of DEEP-GRPO, whose branches are
sampled, and scored, at their root's temperature.

Deviations from the paper (docs/methods.md §3; the paper leaves these open):
- Off-policy handling: every sample's log-probs in the loss (and the old/reference log-probs) are
  computed at the temperature it was sampled at (per-row temperature in the engine and in
  :func:`~deepgrpo_agent.scoring.token_logprobs`), so the ratio is exactly 1 on the first epoch and no
  importance correction is applied. The policy trained is thus the tempered policy of each prompt;
  evaluation samples at the base temperature.
- ΔT = 0.1, T_max = 1.4, the reset rule ("decay": one step of ΔT back toward the base per mixed or
  all-wrong visit) and the pseudo-advantage (off) are unknown in the paper; they are our choices.
- A group counts as correct per sample when its reward is >= 0.5 (the threshold of
  :func:`~deepgrpo_agent.advantages.group_stats`); unscorable samples are ignored, and a group with no
  scorable sample leaves the prompt's temperature unchanged.
- The pseudo-advantage is added after ``advantage_scale`` (it is not scaled) and only to groups whose
  rewards are all equal and all correct. With ``dynamic_sampling`` "drop"/"refill" those groups are
  kept (they carry the pseudo-advantage) and count toward filling the batch.
- DEEP-ERPO: branches from a pivot are sampled (and scored) at the temperature of the root group the
  pivot came from; only root groups update the tracker (a branch group is not a visit of the prompt).
- Temperatures are ``base + k * ΔT`` for an integer level ``k`` (capped at T_max), which keeps the
  schedule exact in floating point and makes the tracker's state a table of small integers.
- One visit per prompt per step: when a step samples a prompt more than once (two groups of it at an
  epoch boundary, or again in a refill round) the tracker is updated once, after the step's root
  rollouts, from the union of its groups' rewards; every group of the step was sampled at the
  temperature the prompt had when the step began.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from deepgrpo_agent.advantages import zero_variance_groups
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.deep_grpo import DeepGRPOConfig, DeepGRPOTrainer, Pivot
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_agent.samples import Rollouts
from deepgrpo_agent.trainer import GRPOTrainer
from deepgrpo_env.grading import CORRECT_THRESHOLD

ResetRule = Literal["base", "decay"]
"""What a mixed or all-wrong visit does to a prompt's temperature."""
Outcome = Literal["all-correct", "all-wrong", "mixed", "unscorable"]
"""How a group of responses to one prompt turned out."""

HISTOGRAM_BINS = 4
"""Equal-width bins of ``erpo/temperature_hist_*`` between the base temperature and T_max."""


# -- configs ---------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ERPOConfig(GRPOConfig):
    """GRPOConfig plus ERPO's own fields (docs/methods.md §3); the base temperature is `temperature`."""

    erpo_temperature_step: float = 0.1
    """ΔT: temperature added on each visit after an all-correct one (unknown in the paper; our choice, grid 0.05/0.1/0.2)."""
    erpo_max_temperature: float = 1.4
    """T_max: cap of the raised temperature, >= `temperature` (unknown in the paper; our choice, grid 1.2/1.4/1.6)."""
    erpo_reset: ResetRule = "decay"
    """After a mixed or all-wrong visit: "decay" steps ΔT back toward the base temperature, "base" jumps back to it (unknown in the paper; our choice: "decay" keeps a revived prompt near the temperature that revived it)."""
    erpo_pseudo_advantage: float = 0.0
    """ε: advantage -ε given to every sample of an all-correct group instead of 0; 0 = off (unknown in the paper; our choice, grid 0.05/0.1)."""
    erpo_history: int = 4
    """Recent visit outcomes kept per prompt (for analysis; the temperature rule reads only the last one; our choice)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            (0.0 < self.erpo_temperature_step < math.inf, "erpo_temperature_step", "> 0 and finite",
             "Use e.g. 0.1 (ΔT grid: 0.05, 0.1, 0.2)."),
            (self.temperature <= self.erpo_max_temperature < math.inf, "erpo_max_temperature",
             f">= `temperature` ({self.temperature}) and finite",
             "Use e.g. 1.4 (grid: 1.2, 1.4, 1.6); equal to `temperature` never raises it."),
            (0.0 <= self.erpo_pseudo_advantage < 1.0, "erpo_pseudo_advantage", "in [0, 1)",
             "Use 0 to turn it off, or a small value such as 0.05 or 0.1."),
            (self.erpo_history >= 1, "erpo_history", ">= 1", "The rule needs the last outcome; use e.g. 4."),
        ]
        for holds, name, expected, fix in checks:
            if not holds:
                raise ValueError(f"Expected `{name}` {expected}, got {getattr(self, name)!r}. {fix}")


@dataclass(kw_only=True)
class DeepERPOConfig(DeepGRPOConfig, ERPOConfig):
    """DeepGRPOConfig plus ERPOConfig's fields: DEEP-GRPO pivots with ERPO's per-prompt temperatures."""


# -- the history tracker ---------------------------------------------------------------------------------


def group_outcome(rewards: np.ndarray | Sequence[float], threshold: float = CORRECT_THRESHOLD) -> Outcome:
    """Classifies one group's rewards (nan = unscorable, ignored)."""
    r = np.asarray(rewards, dtype=np.float64)
    valid = r[~np.isnan(r)]
    if valid.size == 0:
        return "unscorable"
    correct = valid >= threshold
    if correct.all():
        return "all-correct"
    return "mixed" if correct.any() else "all-wrong"


class TemperatureTracker:
    """Per-prompt visit history and sampling temperature (ERPO's history tracker).

    A prompt's temperature is ``min(base + level * step, max_temperature)``; unseen prompts are at
    level 0 (the base). :meth:`update` after an all-correct visit raises the level by one (up to the
    cap); after a mixed or all-wrong visit it lowers it by one ("decay") or sets it to 0 ("base"); an
    unscorable visit leaves it unchanged.

    Args:
        base: Base temperature (``GRPOConfig.temperature``).
        step: ΔT, > 0.
        max_temperature: T_max, >= ``base``.
        reset: "decay" or "base" (see above).
        history: Outcomes kept per prompt.
        threshold: A reward >= this is correct.
    """

    def __init__(self, base: float, step: float, max_temperature: float, reset: ResetRule = "decay",
                 history: int = 4, threshold: float = CORRECT_THRESHOLD) -> None:
        if not (step > 0 and base > 0 and max_temperature >= base):
            raise ValueError(
                f"Expected 0 < `base` <= `max_temperature` and `step` > 0, got base={base}, "
                f"max_temperature={max_temperature}, step={step}."
            )
        if reset not in ("decay", "base"):
            raise ValueError(f"Expected `reset` in ('decay', 'base'), got {reset!r}.")
        if history < 1:
            raise ValueError(f"Expected `history` >= 1, got {history}.")
        self.base, self.step, self.max_temperature = float(base), float(step), float(max_temperature)
        self.reset, self.history_size, self.threshold = reset, int(history), float(threshold)
        # The lowest level whose temperature reaches the cap (1e-9: 0.4 / 0.1 is 4.000000000000001).
        self.max_level = math.ceil((self.max_temperature - self.base) / self.step - 1e-9)
        self._levels: dict[str, int] = {}  # only prompts above level 0
        self._history: dict[str, deque[Outcome]] = {}

    def __len__(self) -> int:
        """Prompts seen so far."""
        return len(self._history)

    def level(self, prompt_id: str) -> int:
        """How many ΔT steps above the base the prompt's next visit is sampled at."""
        return self._levels.get(prompt_id, 0)

    def temperature(self, prompt_id: str) -> float:
        """The sampling temperature of the prompt's next visit."""
        return min(self.base + self.level(prompt_id) * self.step, self.max_temperature)

    def history(self, prompt_id: str) -> tuple[Outcome, ...]:
        """The prompt's recent outcomes, oldest first."""
        return tuple(self._history.get(prompt_id, ()))

    @property
    def raised_prompts(self) -> int:
        """Prompts whose next visit is sampled above the base temperature."""
        return len(self._levels)

    def update(self, prompt_id: str, rewards: np.ndarray | Sequence[float]) -> Outcome:
        """Records a visit's group rewards and moves the prompt's temperature; returns the outcome."""
        outcome = group_outcome(rewards, self.threshold)
        self._history.setdefault(prompt_id, deque(maxlen=self.history_size)).append(outcome)
        level = self.level(prompt_id)
        if outcome == "all-correct":
            level = min(level + 1, self.max_level)
        elif outcome != "unscorable":
            level = max(level - 1, 0) if self.reset == "decay" else 0
        if level:
            self._levels[prompt_id] = level
        else:
            self._levels.pop(prompt_id, None)
        return outcome

    def state_dict(self) -> dict[str, Any]:
        """Plain-data state: levels and histories (the settings come from the config)."""
        return {"levels": dict(self._levels), "history": {k: list(v) for k, v in self._history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (levels above the current cap are capped)."""
        self._levels = {str(k): min(int(v), self.max_level) for k, v in state["levels"].items() if int(v) > 0}
        self._history = {str(k): deque(v, maxlen=self.history_size) for k, v in state["history"].items()}


# -- the pseudo-advantage and metrics (pure) -------------------------------------------------------------


def _group_slices(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group id, in order of first appearance."""
    _, first = np.unique(groups, return_index=True)
    return [np.flatnonzero(groups == groups[i]) for i in np.sort(first)]


def pseudo_advantages(advantages: np.ndarray, rewards: np.ndarray, groups: np.ndarray,
                      zero_variance: np.ndarray, epsilon: float,
                      threshold: float = CORRECT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """ERPO's pseudo-advantage: -ε on the scorable rows of zero-variance all-correct groups.

    Args:
        advantages: (N,) group advantages (0 on zero-variance groups).
        rewards: (N,) rewards, nan = unscorable (keeps advantage 0).
        groups: (N,) group id of each row.
        zero_variance: (N,) True on rows of groups whose scorable rewards are all equal.
        epsilon: ε >= 0.

    Returns:
        ``(advantages (N,), given (N,) bool)``: the new advantages and the rows that got -ε.
    """
    out = np.asarray(advantages, dtype=np.float32).copy()
    given = np.zeros(out.shape[0], dtype=bool)
    if epsilon <= 0:
        return out, given
    r = np.asarray(rewards, dtype=np.float64)
    for rows in _group_slices(np.asarray(groups)):
        if zero_variance[rows].all() and group_outcome(r[rows], threshold) == "all-correct":
            scored = rows[~np.isnan(r[rows])]
            out[scored] = -epsilon
            given[scored] = True
    return out, given


def erpo_metrics(batches: Sequence[RolloutBatch], base: float, max_temperature: float,
                 threshold: float = CORRECT_THRESHOLD) -> dict[str, float]:
    """``erpo/*`` metrics of root batches, per group: outcomes, temperatures, revived raised groups.

    ``erpo/temperature_hist_i`` is the fraction of groups in the i-th of :data:`HISTOGRAM_BINS`
    equal-width bins over [base, max_temperature]; a group is *raised* when sampled above ``base``
    and *revived* when a raised group turned out mixed.
    """
    outcomes: list[Outcome] = []
    temps: list[float] = []
    for b in batches:
        for rows in _group_slices(b.group):
            outcomes.append(group_outcome(b.rewards[rows], threshold))
            temps.append(float(b.temperatures[rows[0]]) if b.temperatures is not None else base)
    n = max(len(outcomes), 1)
    t = np.asarray(temps)
    raised = t > base + 1e-9
    mixed = np.array([o == "mixed" for o in outcomes], dtype=bool)
    hist = np.histogram(t, bins=HISTOGRAM_BINS, range=(base, max(max_temperature, base + 1e-6)))[0]
    out = {
        f"erpo/{o.replace('-', '_')}_fraction": sum(x == o for x in outcomes) / n
        for o in ("all-correct", "all-wrong", "mixed")
    }
    out.update({
        "erpo/temperature_mean": float(t.mean()) if t.size else base,
        "erpo/raised_groups": float(raised.sum()),
        "erpo/revived_fraction": float(mixed[raised].mean()) if raised.any() else float("nan"),
    })
    out.update({f"erpo/temperature_hist_{i}": float(h) / n for i, h in enumerate(hist)})
    return out


# -- the trainers ----------------------------------------------------------------------------------------


class ERPOTrainer(GRPOTrainer):
    """GRPO with ERPO's per-prompt temperatures and pseudo-advantage (see the module docstring).

    The ERPO stages live here; :class:`DeepERPOTrainer` reuses them on top of DEEP-GRPO (its MRO puts
    this class before :class:`~deepgrpo_agent.deep_grpo.DeepGRPOTrainer`).
    """

    algo = "erpo"
    config: ERPOConfig

    def __init__(self, config: ERPOConfig, **kwargs: Any) -> None:
        if not isinstance(config, ERPOConfig):
            raise TypeError(f"Expected an ERPOConfig (or DeepERPOConfig), got {type(config).__name__}.")
        # Strategy state exists before GRPOTrainer.__init__, which may resume it from a checkpoint.
        self.tracker = TemperatureTracker(
            config.temperature, config.erpo_temperature_step, config.erpo_max_temperature,
            config.erpo_reset, config.erpo_history,
        )
        self._visits: dict[str, list[np.ndarray]] | None = None  # this step's rewards per prompt, while collecting
        super().__init__(config, **kwargs)

    # -- the overridden stages --------------------------------------------------------------------
    def collect(self) -> Rollouts:
        """The parent's collection (roots, and DEEP-ERPO's branches), then one tracker visit per prompt.

        The visit is the union of the rewards of all the prompt's groups this step (an epoch boundary
        can draw a problem twice; refill rounds add groups), so the temperature moves by at most one
        ΔT per step and every group of a prompt is sampled at the temperature it had when the step began.
        """
        self._visits = {}
        try:
            rollouts = super().collect()
            visits = self._visits
        finally:
            self._visits = None
        self.record_visits(visits)
        rollouts.metrics.update(self._tracker_metrics())  # after this step's visits
        return rollouts

    def _tracker_metrics(self) -> dict[str, float]:
        return {"erpo/raised_prompts": float(self.tracker.raised_prompts),
                "erpo/tracked_prompts": float(len(self.tracker))}

    def record_visits(self, visits: dict[str, list[np.ndarray]]) -> None:
        """One tracker update per prompt, from the union of the rewards of all its groups."""
        for prompt_id, parts in visits.items():
            self.tracker.update(prompt_id, np.concatenate(parts))

    def root_temperatures(self, problems: np.ndarray) -> np.ndarray:
        """Each problem's tracked temperature (the base for prompts never seen or not raised)."""
        return np.array([self.tracker.temperature(self.env.problem_id(int(i))) for i in problems])

    def observe_roots(self, batch: RolloutBatch) -> np.ndarray:
        """Records each group's rewards as this step's visit of its prompt (applied after the step's
        collection, see :meth:`collect`); rows given the pseudo-advantage carry signal, so dynamic
        sampling keeps them."""
        has_signal = super().observe_roots(batch)
        visits: dict[str, list[np.ndarray]] = {} if self._visits is None else self._visits
        for rows in _group_slices(batch.group):
            visits.setdefault(batch.problem_id[rows[0]], []).append(np.asarray(batch.rewards[rows]))
        if self._visits is None:  # called on its own (not inside collect): this batch is the visit
            self.record_visits(visits)
        _, given = pseudo_advantages(np.zeros(len(batch), dtype=np.float32), batch.rewards, batch.group,
                                     ~has_signal, self.config.erpo_pseudo_advantage)
        out: np.ndarray = has_signal | given
        return out

    def root_advantages(self, batch: RolloutBatch) -> np.ndarray:
        """GRPO's advantages with the pseudo-advantage on all-correct zero-variance groups."""
        advantages = super().root_advantages(batch)
        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32)
        zero_var = zero_variance_groups(rewards, torch.as_tensor(batch.group, dtype=torch.int64)).numpy()
        adv, _ = pseudo_advantages(advantages, batch.rewards, batch.group, zero_var,
                                   self.config.erpo_pseudo_advantage)
        return adv

    def rollout_metrics(self, batches: Sequence[RolloutBatch]) -> dict[str, float]:
        """GRPO's rollout metrics plus ``erpo/*`` (see :func:`erpo_metrics`)."""
        cfg = self.config
        metrics = super().rollout_metrics(batches)
        metrics.update(erpo_metrics(batches, cfg.temperature, cfg.erpo_max_temperature))
        metrics.update(self._tracker_metrics())
        return metrics

    # -- checkpointed strategy state --------------------------------------------------------------
    def strategy_state(self) -> dict[str, Any]:
        return {**super().strategy_state(), "erpo_tracker": self.tracker.state_dict()}

    def load_strategy_state(self, state: dict[str, Any]) -> None:
        super().load_strategy_state(state)
        self.tracker.load_state_dict(state["erpo_tracker"])


@dataclass(frozen=True)
class TemperedPivot(Pivot):
    """A pivot that remembers the temperature its root group was sampled at."""

    temperature: float = 1.0


class DeepERPOTrainer(ERPOTrainer, DeepGRPOTrainer):
    """DEEP-GRPO with ERPO's temperatures: roots at their prompt's temperature, branches at their root's."""

    algo = "deep-erpo"
    config: DeepERPOConfig

    def choose_pivots(self, batch: RolloutBatch) -> list[Pivot]:
        """DEEP-GRPO's pivots, each tagged with its root group's sampling temperature."""
        temps = batch.temperatures
        base = self.config.temperature
        return [TemperedPivot(p.row, p.depth, p.ratio, p.state, p.features,
                              temperature=float(temps[p.row]) if temps is not None else base)
                for p in super().choose_pivots(batch)]

    def branch_temperatures(self, pivots: list[Pivot]) -> list[float] | None:
        """Each pivot's branches are sampled at its root's temperature."""
        return list(_pivot_temperatures(pivots, self.config.temperature))


def _pivot_temperatures(pivots: Iterable[Pivot], base: float) -> Iterable[float]:
    for p in pivots:
        yield p.temperature if isinstance(p, TemperedPivot) else base


__all__ = [
    "DeepERPOConfig",
    "DeepERPOTrainer",
    "ERPOConfig",
    "ERPOTrainer",
    "TemperatureTracker",
    "TemperedPivot",
    "erpo_metrics",
    "group_outcome",
    "pseudo_advantages",
]
