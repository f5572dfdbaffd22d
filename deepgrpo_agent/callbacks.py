"""Trainer callbacks: JSONL/TensorBoard/wandb logging, the progress bar, evaluation and checkpoints."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Protocol


class _BudgetLike(Protocol):
    @property
    def generated_tokens(self) -> int: ...


class TrainerLike(Protocol):
    """What callbacks may use of a trainer (every :class:`~deepgrpo_agent.trainer.GRPOTrainer` has it).

    Callbacks are typed against this protocol, not the trainer class, so this module imports no
    trainer (no import cycle) and a callback works with any trainer that has these members.
    """

    config: Any
    step: int

    @property
    def budget(self) -> _BudgetLike: ...

    @property
    def finished(self) -> bool: ...

    def evaluate(self, step: int | None = None) -> dict[str, float]: ...

    def save_checkpoint(self) -> Path: ...


class Callback:
    """Hooks the trainer calls; override what you need."""

    def on_train_begin(self, trainer: TrainerLike) -> None:
        """Before the first step (after a resume, before the first new step)."""

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        """After step ``step`` (1-based) finished its update; ``metrics`` may be extended."""

    def on_evaluate(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        """After an evaluation at ``step`` (0 = before training)."""

    def on_train_end(self, trainer: TrainerLike) -> None:
        """After the last step."""


def _clean(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[k] = f if math.isfinite(f) else float("nan")
    return out


class JSONLLogger(Callback):
    """Appends one JSON line per step and per evaluation to ``<output_dir>/metrics.jsonl``.

    On resume, lines after the resumed step are dropped first so the file matches the run.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, trainer: TrainerLike) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= trainer.step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
            self.path.write_text("".join(k + "\n" for k in kept))

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        if step % trainer.config.log_every == 0 or trainer.finished:
            self._write({"step": step, "kind": "train", "time": time.time(), **_clean(metrics)})

    def on_evaluate(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        self._write({"step": step, "kind": "eval", "time": time.time(), **_clean(metrics)})


class TensorBoardLogger(Callback):
    """Writes scalars to ``<output_dir>/tensorboard``."""

    def __init__(self, logdir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        if step % trainer.config.log_every == 0 or trainer.finished:
            self._scalars(step, metrics)

    def _scalars(self, step: int, metrics: dict[str, float]) -> None:
        for k, v in _clean(metrics).items():
            self.writer.add_scalar(k, v, step)

    def on_evaluate(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        self._scalars(step, metrics)
        self.writer.flush()

    def on_train_end(self, trainer: TrainerLike) -> None:
        self.writer.close()


class WandbLogger(Callback):
    """Logs to Weights & Biases (optional dependency)."""

    def __init__(self, project: str, config: dict[str, Any], run_name: str | None) -> None:
        try:
            import wandb
        except ImportError as e:
            raise ImportError("wandb=True needs the wandb package: pip install wandb") from e
        self.run = wandb.init(project=project, config=config, name=run_name)

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        self.run.log(_clean(metrics), step=step)

    def on_evaluate(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        self.run.log(_clean(metrics), step=step)

    def on_train_end(self, trainer: TrainerLike) -> None:
        self.run.finish()


class ProgressBar(Callback):
    """A live tqdm bar with reward, accuracy and tokens/s."""

    def on_train_begin(self, trainer: TrainerLike) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.config.total_steps, initial=trainer.step, desc="train", unit="step",
                        dynamic_ncols=True)

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            reward=f"{metrics.get('rollout/reward_mean', float('nan')):.3f}",
            acc=f"{metrics.get('rollout/accuracy', float('nan')):.3f}",
            tok_s=f"{metrics.get('perf/generated_tokens_per_s', 0.0):.0f}",
            loss=f"{metrics.get('loss/total', float('nan')):.4f}",
        )

    def on_evaluate(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        msg = ", ".join(f"{k.split('/')[-1]}={v:.3f}" for k, v in metrics.items() if k.startswith("eval/"))
        self.bar.write(f"[eval @ step {step}] {msg}")

    def on_train_end(self, trainer: TrainerLike) -> None:
        self.bar.close()


class EvalCallback(Callback):
    """Evaluates on the held-out problems every ``every`` steps, each time the generated-token count
    crosses a multiple of ``every_tokens``, and after the last step (when either is on)."""

    def __init__(self, every: int, every_tokens: int = 0) -> None:
        self.every = every
        self.every_tokens = every_tokens
        self._tokens_seen = 0

    def on_train_begin(self, trainer: TrainerLike) -> None:
        self._tokens_seen = trainer.budget.generated_tokens

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        tokens, before = trainer.budget.generated_tokens, self._tokens_seen
        self._tokens_seen = tokens
        by_steps = self.every > 0 and step % self.every == 0
        by_tokens = self.every_tokens > 0 and tokens // self.every_tokens > before // self.every_tokens
        if by_steps or by_tokens or ((self.every > 0 or self.every_tokens > 0) and trainer.finished):
            trainer.evaluate(step)


class CheckpointCallback(Callback):
    """Saves a complete checkpoint every ``every`` steps and after the last step."""

    def __init__(self, every: int) -> None:
        self.every = every

    def on_step_end(self, trainer: TrainerLike, step: int, metrics: dict[str, float]) -> None:
        if (self.every > 0 and step % self.every == 0) or trainer.finished:
            trainer.save_checkpoint()


__all__ = [
    "Callback",
    "CheckpointCallback",
    "EvalCallback",
    "JSONLLogger",
    "ProgressBar",
    "TensorBoardLogger",
    "TrainerLike",
    "WandbLogger",
]
