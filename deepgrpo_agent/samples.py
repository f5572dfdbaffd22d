"""What the update trains on (:class:`TrainSamples`) and what the collect stage hands on (:class:`Rollouts`).

These are plain data: the trainer's three stages pass them along
(``collect() -> Rollouts``, ``compute_advantages(Rollouts) -> TrainSamples``, ``update(TrainSamples)``),
and :func:`~deepgrpo_agent.update.policy_update` reads only them and its explicit arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from deepgrpo_agent.rollout import RolloutBatch

GLOBAL_STREAM = 0
"""Stream id of root rollouts (the GRPO stream)."""


@dataclass
class TrainSamples:
    """What the update trains on: one row per sequence.

    Attributes:
        contexts: Prompt (+ prefix) ids per row: conditioning only, no loss (gradient-masked).
        targets: Generated ids per row: these tokens get the loss.
        advantages: (N,) advantage broadcast to every target token.
        streams: (N,) stream id (0 = global GRPO stream; DEEP-GRPO adds 1 = local pivot groups).
        temperatures: (N,) temperature each row was sampled at, which the loss scores it at (ERPO);
            None, or nan in a row, = ``config.temperature``.
        token_advantages: Per-token advantages, one float32 array per row of ``len(targets[i])``,
            that replace the row's ``advantages[i]`` in the loss (TreeRL's path rows, whose segments
            have different advantages); None = every token gets its row's advantage.
    """

    contexts: list[np.ndarray]
    targets: list[np.ndarray]
    advantages: np.ndarray
    streams: np.ndarray
    temperatures: np.ndarray | None = None
    token_advantages: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def row_token_advantages(self, i: int) -> np.ndarray:
        """Row ``i``'s advantage of each target token, (len(targets[i]),) float32."""
        if self.token_advantages is not None:
            return np.asarray(self.token_advantages[i], dtype=np.float32)
        return np.full(len(self.targets[i]), self.advantages[i], dtype=np.float32)

    def has_signal(self) -> np.ndarray:
        """(N,) bool: rows with a non-zero advantage on some token."""
        if self.token_advantages is None:
            return np.asarray(self.advantages != 0)
        return np.array([bool(np.any(a != 0)) for a in self.token_advantages], dtype=bool)

    @staticmethod
    def from_batch(batch: RolloutBatch, advantages: np.ndarray, stream: int = GLOBAL_STREAM) -> TrainSamples:
        """One row per sequence of ``batch``: context = prompt + shared prefix, target = the new tokens.

        Rows keep the temperatures they were sampled at (``batch.temperatures``, None = the config's).
        """
        adv = np.asarray(advantages, dtype=np.float32)
        if adv.shape != (len(batch),):
            raise ValueError(f"Expected one advantage per row ({len(batch)}), got shape {adv.shape}.")
        contexts = [np.concatenate([p, x]) for p, x in zip(batch.prompt_ids, batch.prefix_ids)]
        return TrainSamples(
            contexts, list(batch.new_ids), adv, np.full(len(adv), stream, dtype=np.int64), batch.temperatures
        )

    @staticmethod
    def concat(parts: Sequence[TrainSamples]) -> TrainSamples:
        temps = None
        if any(p.temperatures is not None for p in parts):  # parts without them keep the config's (nan)
            temps = np.concatenate(
                [
                    np.full(len(p), np.nan)
                    if p.temperatures is None
                    else np.asarray(p.temperatures, dtype=np.float64)
                    for p in parts
                ]
            )
        tokens = None
        if any(p.token_advantages is not None for p in parts):
            tokens = [p.row_token_advantages(i) for p in parts for i in range(len(p))]
        return TrainSamples(
            [c for p in parts for c in p.contexts],
            [t for p in parts for t in p.targets],
            np.concatenate([p.advantages for p in parts]) if parts else np.zeros(0),
            np.concatenate([p.streams for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
            temps,
            tokens,
        )

    def select(self, keep: np.ndarray) -> TrainSamples:
        idx = np.flatnonzero(keep)
        return TrainSamples(
            [self.contexts[i] for i in idx],
            [self.targets[i] for i in idx],
            self.advantages[idx],
            self.streams[idx],
            None if self.temperatures is None else self.temperatures[idx],
            None if self.token_advantages is None else [self.token_advantages[i] for i in idx],
        )


@dataclass
class Rollouts:
    """What one step's :meth:`~deepgrpo_agent.trainer.GRPOTrainer.collect` sampled.

    Strategies that sample more (DEEP-GRPO's branches, the trees' forks) subclass it.

    Attributes:
        roots: Every root batch sampled this step (dynamic-sampling refills included).
        signal: Per root batch, (N,) bool: the rows whose group carries a learning signal (what
            dynamic sampling keeps).
        metrics: Rollout metrics of the step.
    """

    roots: list[RolloutBatch]
    signal: list[np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)


__all__ = ["GLOBAL_STREAM", "Rollouts", "TrainSamples"]
