"""The ``deepgrpo`` command: ``train``, ``eval``, ``main`` (the README's short real run), ``compare`` and ``envs``.

Every user error ends the command with one line on stderr, ``deepgrpo: error: ...`` (what was
expected, what came, how to fix it) and exit status 2; ``--debug`` anywhere on the command line
shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepgrpo_agent.callbacks import Callback

PROG = "deepgrpo"


class UsageError(ValueError):
    """A user error found by the command line itself (bad env id, env kwarg, output directory)."""


def _trainer_classes(algo: str) -> tuple[type, type]:
    from deepgrpo_agent.algorithms import get_algorithm

    try:
        return get_algorithm(algo)
    except ValueError as e:
        raise UsageError(f"--algo: {e}") from e


def _env_entry(env_id: str) -> Any:
    """The deepgrpo registry entry of ``env_id`` (``envs_registry:`` prefix allowed), or a UsageError."""
    import envs_registry

    name = env_id.split(":", 1)[1] if env_id.startswith("envs_registry:") else env_id
    for entry in envs_registry.ENTRIES:
        if entry.id == name:
            return entry
    close = envs_registry.suggest(name)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    ids = ", ".join(envs_registry.list_envs())
    raise UsageError(
        f"--env-id: expected a deepgrpo env id, got {env_id!r}.{hint} deepgrpo trains only its own "
        f"token-level envs: {ids} (`deepgrpo envs` describes them)."
    )


def check_env_args(env_id: str, env_kwargs: dict[str, Any], flag: str = "--env-id") -> None:
    """Refuses env ids that are not deepgrpo envs and env kwargs the env does not take ("did you mean")."""
    try:
        entry = _env_entry(env_id)
    except UsageError as e:
        raise UsageError(str(e).replace("--env-id", flag, 1)) from None
    module, _, cls_name = entry.entry_point.partition(":")
    params = inspect.signature(getattr(importlib.import_module(module), cls_name).__init__).parameters
    accepted = [n for n, p in params.items() if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in env_kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(
                f"--env-kwargs: {entry.id} has no argument {key!r}.{hint} Expected keys from {sorted(accepted)}."
            )


def check_output_dir(path: str | os.PathLike[str]) -> None:
    """Makes sure ``path`` is (or can become) a directory this process can write to."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        blocker = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file" if blocker is not None else (e.strerror or str(e)).lower()
        raise UsageError(
            f"--output-dir: expected a writable directory, got {str(out)!r} ({why}); pass another --output-dir."
        ) from e


def cmd_train(argv: Sequence[str]) -> int:
    """``deepgrpo train [--algo grpo|deep-grpo|erpo|deep-erpo|treerl|uniform-tree] [--config FILE.yaml] [--field value ...]``."""
    from deepgrpo_agent.config_cli import parse_config

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="grpo")
    known, rest = pre.parse_known_args(argv)
    config_cls, trainer_cls = _trainer_classes(known.algo)
    config: Any = parse_config(config_cls, rest, prog=f"{PROG} train")
    _check_config(config)
    trainer = trainer_cls(config)
    trainer.train()
    _summary(trainer)
    return 0


def _check_config(config: Any, *, write: bool = True) -> None:
    check_env_args(config.env_id, dict(config.env_kwargs))
    if getattr(config, "eval_env_id", None):
        check_env_args(config.eval_env_id, dict(config.env_kwargs), flag="--eval-env-id")
    if write:
        check_output_dir(config.output_dir)


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
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.config_cli import parse_config
    from deepgrpo_agent.evaluation import evaluate_config

    config = parse_config(GRPOConfig, list(argv) + ["--no-tensorboard", "--no-progress"], prog=f"{PROG} eval")
    _check_config(config, write=False)  # eval writes nothing
    metrics = evaluate_config(config)  # the policy, the eval env and the engine: no trainer
    print(json.dumps(metrics, indent=2))
    return 0


MAIN_JOB = [
    "--env-id", "MathReasoning-MAWPS-SingleOp-v0",
    "--env-kwargs", '{"prompt": "brief"}',
    "--model", "default",
    "--dtype", "auto",
    "--prompts-per-step", "4",
    "--group-size", "8",
    "--max-new-tokens", "48",
    "--temperature", "0.7",
    "--truncated-roots-fail",
    "--total-steps", "32",
    "--learning-rate", "2e-5",
    "--loss-aggregation", "sequence-mean",
    "--eval-every", "32",
    "--eval-problems", "300",
    "--pass-k", "0",
    "--save-every", "16",
    "--no-progress",
    "--output-dir", "runs/main",
]
"""The main job's flags (docs/main_job.md says how they were chosen); later flags on the command line win."""


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / max(n, 1))


def paired_gain(before: Sequence[bool], after: Sequence[bool]) -> tuple[float, float, int, int]:
    """The accuracy gain of ``after`` over ``before`` on the same problems and its standard error.

    Paired (each problem's ``after - before`` in {-1, 0, +1}): ``se = std(d) / sqrt(n)`` with the
    population std, i.e. ``sqrt((b + c) / n - gain**2) / sqrt(n)`` where ``b`` problems were lost
    and ``c`` gained. Returns ``(gain, se, c, b)``.

    Raises:
        ValueError: If the two evaluations are not of the same (non-zero) number of problems.
    """
    if len(before) != len(after) or len(before) == 0:
        raise ValueError(
            f"Expected two evaluations of the same problems, got {len(before)} and {len(after)} answers."
        )
    d = [int(a) - int(b) for b, a in zip(before, after)]
    n = len(d)
    gain = sum(d) / n
    var = max(sum(x * x for x in d) / n - gain * gain, 0.0)
    return gain, math.sqrt(var / n), d.count(1), d.count(-1)


def accuracy_summary(
    history: Sequence[dict[str, float]], correct: Sequence[Sequence[bool]] | None = None
) -> list[str]:
    """Lines for held-out greedy accuracy before -> after, each with its binomial standard error, and
    the gain with its standard error and 95% interval.

    With ``correct`` (each evaluation's per-problem correctness, the trainer's ``eval_correct``) the
    gain's error is the paired one (:func:`paired_gain`: the same problems before and after); the
    unpaired error (the two evaluations treated as independent, larger) is printed too.
    """
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
    ]
    paired = correct is not None and len(correct) >= 2 and len(correct[0]) == len(correct[-1]) == n > 0
    if paired:
        assert correct is not None
        gain, se_p, won, lost = paired_gain(correct[0], correct[-1])
        lines.append(
            f"gain {gain:+.3f} ± {se_p:.3f} paired (95% interval {gain - 1.96 * se_p:+.3f} .. {gain + 1.96 * se_p:+.3f}; "
            f"{gain / se_p if se_p > 0 else float('nan'):+.1f} standard errors; {won} problems gained, {lost} lost)"
        )
    lines.append(
        f"gain {b - a:+.3f} ± {se:.3f}{' unpaired' if paired else ''} (95% interval {b - a - 1.96 * se:+.3f} .. "
        f"{b - a + 1.96 * se:+.3f}; {(b - a) / se if se > 0 else float('nan'):+.1f} standard errors"
        f"{', the two evaluations treated as independent' if paired else ''})"
    )
    if "eval/truncated_fraction" in first:
        lines.append(f"truncated answers {first['eval/truncated_fraction']:.3f} -> {last['eval/truncated_fraction']:.3f}, "
                     f"mean length {first.get('eval/response_length', float('nan')):.0f} -> "
                     f"{last.get('eval/response_length', float('nan')):.0f} tokens")
    return lines


class StepPrinter(Callback):
    """Prints one line per training step: reward, rollout accuracy, truncation, length, groups with signal, gradient norm and time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_train_begin(self, trainer: Any) -> None:
        print(f"precision: {trainer.precision}; {trainer.config.total_steps} steps of "
              f"{trainer.config.prompts_per_step} prompts x {trainer.config.group_size}", flush=True)

    def on_step_end(self, trainer: Any, step: int, m: dict[str, float]) -> None:
        # GRPO's loss is ~0 at every step (group-normalized advantages sum to 0 and the update starts
        # on-policy), so the line shows what drives the update instead: the groups whose answers
        # disagree (the others give no gradient) and the gradient norm before clipping.
        groups = trainer.config.prompts_per_step
        signal = round(groups * (1.0 - m.get("rollout/zero_variance_fraction", 1.0)))
        print(f"step {step:3d}  reward {m.get('rollout/reward_mean', float('nan')):.3f}  "
              f"accuracy {m.get('rollout/accuracy', float('nan')):.3f}  "
              f"truncated {m.get('rollout/truncated_fraction', float('nan')):.2f}  "
              f"length {m.get('rollout/response_length', float('nan')):5.1f}  "
              f"groups with signal {signal}/{groups}  grad norm {m.get('train/grad_norm', 0.0):.3f}  "
              f"step {m.get('perf/step_s', float('nan')):5.1f} s  "
              f"elapsed {time.perf_counter() - self.start:6.0f} s", flush=True)

    def on_evaluate(self, trainer: Any, step: int, m: dict[str, float]) -> None:
        print(f"[eval @ step {step}] accuracy {m.get('eval/accuracy', float('nan')):.3f} on "
              f"{int(m.get('eval/problems', 0))} problems, truncated {m.get('eval/truncated_fraction', float('nan')):.2f}, "
              f"elapsed {time.perf_counter() - self.start:.0f} s", flush=True)



def cmd_main(argv: Sequence[str]) -> int:
    """The README's main job: a short real GRPO run of the default model on MAWPS singleop, on the CPU."""
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.config_cli import parse_config
    from deepgrpo_agent.trainer import GRPOTrainer

    print("deepgrpo main job: GRPO on MAWPS one-operation word problems (MathReasoning-MAWPS-SingleOp-v0) "
          "with SmolLM2-135M-Instruct (embedded).")
    print("Held-out greedy accuracy is measured before and after training (reward = correctness only: 1 for a "
          "finished answer whose last number is right, 0 otherwise, including answers cut at the budget).\n")
    start = time.perf_counter()
    config = parse_config(GRPOConfig, MAIN_JOB + list(argv), prog=f"{PROG} main")
    _check_config(config)
    trainer = GRPOTrainer(config, callbacks=[StepPrinter()])
    trainer.train()
    print()
    for line in accuracy_summary(trainer.eval_history, [c.tolist() for c in trainer.eval_correct]):
        print(line)
    print(f"wall time {time.perf_counter() - start:.0f} s (evaluation included)")
    _summary(trainer)
    return 0


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
    """``deepgrpo compare [--protocol tokens|steps] [--strategies ...] [--seeds ...] [--baselines ...] [--lr-sweep ...]
    [--ray [ADDRESS]] [--list]``: strategies x seeds at equal generated tokens or equal optimizer steps."""
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


def cmd_recoverability(argv: Sequence[str]) -> int:
    """``deepgrpo recoverability [--env-id ID] [--model M] [--failed N] [--branches K] ...``: branch K from every position of failed trajectories."""
    from deepgrpo_agent.config_cli import parse_config
    from deepgrpo_agent.recoverability import RecoverabilityConfig, run_probe

    cfg = parse_config(RecoverabilityConfig, list(argv), prog="deepgrpo recoverability")
    check_env_args(cfg.env_id, cfg.env_kwargs)
    check_output_dir(cfg.output_dir)
    run_probe(cfg)
    return 0


def cmd_envs(argv: Sequence[str]) -> int:
    """``deepgrpo envs``: every registered id with its description."""
    import envs_registry

    for env_id, desc in envs_registry.list_envs().items():
        print(f"{env_id:32s} {desc}")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "main": cmd_main, "compare": cmd_compare, "envs": cmd_envs,
            "recoverability": cmd_recoverability}

# Exceptions that mean "the input was wrong" (exit 2); anything else is reported as an internal error (exit 1).
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, OSError, ImportError)


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with newlines folded, a worker traceback cut to its last line."""
    text = str(error).strip()
    if isinstance(error, OSError) and error.strerror and not text.startswith("Could not"):
        where = f" at {error.filename}" if error.filename else ""
        text = f"{error.strerror.lower()}{where}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if any(line.startswith("Traceback") for line in lines):
        head = lines[0]
        last = lines[-1]
        lines = [head, f"(worker said: {last})"] if last != head else [head]
    text = " ".join(lines) or type(error).__name__
    if text and len(text) > 2000:
        text = text[:2000] + "..."
    return text


def _fail(error: BaseException) -> int:
    user = isinstance(error, _USER_ERRORS) or type(error).__name__ in ("CheckpointError", "VerifierError")
    detail = one_line(error)
    if not user:
        detail = f"internal error ({type(error).__name__}): {detail} (rerun with --debug for the traceback)"
    print(f"{PROG}: error: {detail}", file=sys.stderr)
    return 2 if user else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deepgrpo`` console script.

    A user error prints one line, ``deepgrpo: error: ...``, and returns 2; ``--debug`` (anywhere in the
    arguments) lets the exception and its traceback through instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        if args and args[0] not in ("-h", "--help") and args[0] not in COMMANDS:
            close = difflib.get_close_matches(args[0], list(COMMANDS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            print(f"{PROG}: error: unknown command {args[0]!r}; expected one of {list(COMMANDS)}.{hint}",
                  file=sys.stderr)
            return 2
        print("usage: deepgrpo {train,eval,main,compare,envs,recoverability} [options]   (deepgrpo train --help for the flags)")
        for name, fn in COMMANDS.items():
            summary = (fn.__doc__ or "").strip().splitlines()[0].replace("``", "")
            print(f"  {name:14s} {summary}")
        return 0
    try:
        return COMMANDS[args[0]](args[1:])
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{PROG}: interrupted (checkpoints written so far are kept; --resume continues)", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        return _fail(e)


if __name__ == "__main__":
    raise SystemExit(main())
