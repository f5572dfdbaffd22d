"""The ``deepgrpo`` command: ``train``, ``eval``, ``main`` (the README's short real run), ``compare`` and ``envs``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


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
    "--env-id", "MathReasoning-SVAMP-v0",
    "--model", "default",
    "--prompts-per-step", "4",
    "--group-size", "8",
    "--max-new-tokens", "128",
    "--total-steps", "8",
    "--learning-rate", "2e-5",
    "--eval-every", "8",
    "--eval-problems", "128",
    "--pass-k", "0",
    "--save-every", "4",
    "--output-dir", "runs/main",
]


def cmd_main(argv: Sequence[str]) -> int:
    """The README's main job: a short real GRPO run of the default model on SVAMP, on the CPU."""
    print("deepgrpo main job: GRPO on MathReasoning-SVAMP-v0 with SmolLM2-135M-Instruct (embedded).")
    print("Held-out greedy accuracy is measured before and after training.\n")
    return cmd_train(MAIN_JOB + list(argv))


def _ray_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepgrpo compare", add_help=False, usage="deepgrpo compare [Ray options] [options]")
    ray = parser.add_argument_group("running on Ray (pip install 'deepgrpo[ray]'; docs/ray.md)")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="run every (strategy, seed) as a Ray task: alone or 'local' starts a cluster on this "
                          "machine, 'auto' joins the one `ray start --head` started, 'ray://HOST:10001' a remote one")
    ray.add_argument("--ray-cpus-per-run", type=float, default=1.0, metavar="N",
                     help="CPUs each run asks Ray for (its torch threads); default 1")
    ray.add_argument("--ray-gpus-per-run", type=float, default=0.0, metavar="N",
                     help="GPUs each run asks Ray for (0.5 = two runs per GPU); default 0")
    ray.add_argument("--ray-num-cpus", type=int, default=None, metavar="N",
                     help="CPUs of the local cluster --ray starts (default: all of this machine's)")
    return parser


def cmd_compare(argv: Sequence[str]) -> int:
    """``deepgrpo compare [--strategies ...] [--seeds ...] [--token-budget N] [--ray [ADDRESS]] [--list]``: equal-budget comparison."""
    from deepgrpo_agent.compare import CompareConfig, describe_strategies, run_comparison
    from deepgrpo_agent.config_cli import parse_config

    if "--list" in argv:
        print(describe_strategies())
        return 0
    ray_parser = _ray_parser()
    if "-h" in argv or "--help" in argv:
        ray_parser.print_help()
        print()
    ray_args, rest = ray_parser.parse_known_args(list(argv))
    cfg = parse_config(CompareConfig, rest, prog="deepgrpo compare")
    runner = None
    if ray_args.ray is not None:
        from deepgrpo_agent.ray_runner import RayRunner, require_ray

        try:
            require_ray("deepgrpo compare --ray")
            runner = RayRunner(ray_args.ray, ray_args.ray_cpus_per_run, ray_args.ray_gpus_per_run, ray_args.ray_num_cpus)
        except (ImportError, ValueError) as e:
            raise SystemExit(f"deepgrpo compare: {e}") from e
    run_comparison(cfg, runner)
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
