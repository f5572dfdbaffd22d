"""The ``deepgrpo`` command: ``train``, ``eval``, ``main`` (the README's short real run), ``compare`` and ``envs``."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

from deepgrpo_agent.callbacks import Callback


def _trainer_classes(algo: str) -> tuple[type, type]:
    from deepgrpo_agent.algorithms import get_algorithm

    try:
        return get_algorithm(algo)
    except ValueError as e:
        raise SystemExit(f"--algo: {e}") from e


def cmd_train(argv: Sequence[str]) -> int:
    """``deepgrpo train [--algo grpo|deep-grpo|erpo|deep-erpo|treerl|uniform-tree] [--config FILE.yaml] [--field value ...]``."""
    from deepgrpo_agent.config_cli import parse_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="grpo")
    known, rest = pre.parse_known_args(argv)
    config_cls, trainer_cls = _trainer_classes(known.algo)
    config: Any = parse_config(config_cls, rest)
    trainer = trainer_cls(config)
    trainer.train()
    _summary(trainer)
    return 0


def _summary(trainer: object) -> None:
    history = getattr(trainer, "eval_history", [])
    if history:
        first, last = history[0], history[-1]
        keys = [k for k in first if k.startswith("eval/")]
        print("\nheld-out evaluation (before -> after):")
        for k in keys:
            print(f"  {k:28s} {first[k]:.3f} -> {last.get(k, float('nan')):.3f}")
    out = getattr(trainer, "output_dir", None)
    if out is not None:
        print(f"\nlogs: {out / 'metrics.jsonl'} (TensorBoard: {out / 'tensorboard'})")
        print(f"checkpoints: {out / 'checkpoints'} (resume with --resume); final policy: {out / 'final_model'}")


def cmd_eval(argv: Sequence[str]) -> int:
    """``deepgrpo eval --model DIR|default --env-id ID --eval-problems N [--pass-k K]``."""
    import torch

    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.config_cli import parse_config
    from deepgrpo_agent.trainer import GRPOTrainer

    config = parse_config(GRPOConfig, list(argv) + ["--no-tensorboard", "--no-progress"])
    trainer = GRPOTrainer(config)
    with torch.no_grad():
        metrics = trainer.evaluate(0)
    print(json.dumps(metrics, indent=2))
    return 0


MAIN_JOB = [
    "--env-id", "MathReasoning-MAWPS-v0",
    "--env-kwargs", '{"prompt": "brief"}',
    "--model", "default",
    "--dtype", "auto",
    "--prompts-per-step", "4",
    "--group-size", "8",
    "--max-new-tokens", "64",
    "--total-steps", "12",
    "--learning-rate", "3e-5",
    "--eval-every", "12",
    "--eval-problems", "200",
    "--pass-k", "0",
    "--save-every", "6",
    "--no-progress",
    "--output-dir", "runs/main",
]
"""The main job's flags (docs/main_job.md says how they were chosen); later flags on the command line win."""


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def accuracy_summary(history: Sequence[dict[str, float]]) -> list[str]:
    """Lines for held-out greedy accuracy before -> after, each with its binomial standard error, and
    the gain with its standard error and 95% interval (the two evaluations treated as independent,
    which over-states the error of a difference on the same problems: the interval is conservative)."""
    if len(history) < 2 or "eval/accuracy" not in history[0]:
        return []
    first, last = history[0], history[-1]
    n = int(first.get("eval/problems", 0))
    a, b = first["eval/accuracy"], last["eval/accuracy"]
    se_a, se_b = _binomial_se(a, n), _binomial_se(b, n)
    se = math.hypot(se_a, se_b)
    lines = [
        f"held-out greedy accuracy on {n} problems: {a:.3f} ± {se_a:.3f} (step {int(first['step'])}) -> "
        f"{b:.3f} ± {se_b:.3f} (step {int(last['step'])})",
        f"gain {b - a:+.3f} ± {se:.3f} (95% interval {b - a - 1.96 * se:+.3f} .. {b - a + 1.96 * se:+.3f}; "
        f"{(b - a) / se if se > 0 else float('nan'):+.1f} standard errors)",
    ]
    if "eval/truncated_fraction" in first:
        lines.append(f"truncated answers {first['eval/truncated_fraction']:.3f} -> {last['eval/truncated_fraction']:.3f}, "
                     f"mean length {first.get('eval/response_length', float('nan')):.0f} -> "
                     f"{last.get('eval/response_length', float('nan')):.0f} tokens")
    return lines


class StepPrinter(Callback):
    """Prints one line per training step: reward, rollout accuracy, truncation, length, loss and time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_train_begin(self, trainer: Any) -> None:
        print(f"precision: {trainer.precision}; {trainer.config.total_steps} steps of "
              f"{trainer.config.prompts_per_step} prompts x {trainer.config.group_size}", flush=True)

    def on_step_end(self, trainer: Any, step: int, m: dict[str, float]) -> None:
        print(f"step {step:3d}  reward {m.get('rollout/reward_mean', float('nan')):.3f}  "
              f"accuracy {m.get('rollout/accuracy', float('nan')):.3f}  "
              f"truncated {m.get('rollout/truncated_fraction', float('nan')):.2f}  "
              f"length {m.get('rollout/response_length', float('nan')):5.1f}  "
              f"loss {m.get('loss/total', float('nan')):+.4f}  step {m.get('perf/step_s', float('nan')):5.1f} s  "
              f"elapsed {time.perf_counter() - self.start:6.0f} s", flush=True)

    def on_evaluate(self, trainer: Any, step: int, m: dict[str, float]) -> None:
        print(f"[eval @ step {step}] accuracy {m.get('eval/accuracy', float('nan')):.3f} on "
              f"{int(m.get('eval/problems', 0))} problems, truncated {m.get('eval/truncated_fraction', float('nan')):.2f}, "
              f"elapsed {time.perf_counter() - self.start:.0f} s", flush=True)



def cmd_main(argv: Sequence[str]) -> int:
    """The README's main job: a short real GRPO run of the default model on MAWPS, on the CPU."""
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.config_cli import parse_config
    from deepgrpo_agent.trainer import GRPOTrainer

    print("deepgrpo main job: GRPO on MathReasoning-MAWPS-v0 with SmolLM2-135M-Instruct (embedded).")
    print("Held-out greedy accuracy is measured before and after training (reward = correctness only).\n")
    start = time.perf_counter()
    config = parse_config(GRPOConfig, MAIN_JOB + list(argv))
    trainer = GRPOTrainer(config, callbacks=[StepPrinter()])
    trainer.train()
    print()
    for line in accuracy_summary(trainer.eval_history):
        print(line)
    print(f"wall time {time.perf_counter() - start:.0f} s (evaluation included)")
    _summary(trainer)
    return 0


def cmd_compare(argv: Sequence[str]) -> int:
    """``deepgrpo compare [--strategies ...] [--seeds ...] [--token-budget N] [--list]``: equal-budget comparison."""
    from deepgrpo_agent.compare import CompareConfig, describe_strategies, run_comparison
    from deepgrpo_agent.config_cli import parse_config

    if "--list" in argv:
        print(describe_strategies())
        return 0
    run_comparison(parse_config(CompareConfig, list(argv), prog="deepgrpo compare"))
    return 0


def cmd_envs(argv: Sequence[str]) -> int:
    """``deepgrpo envs``: every registered id with its description."""
    import envs_registry

    for env_id, desc in envs_registry.list_envs().items():
        print(f"{env_id:32s} {desc}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "main": cmd_main, "compare": cmd_compare, "envs": cmd_envs}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepgrpo`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        print("usage: deepgrpo {train,eval,main,compare,envs} [options]   (deepgrpo train --help for the flags)")
        for name, fn in COMMANDS.items():
            summary = (fn.__doc__ or "").strip().splitlines()[0].replace("``", "")
            print(f"  {name:6s} {summary}")
        return 0 if (args and args[0] in ("-h", "--help")) or not args else 2
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
