"""What Ray costs: rollout workers' per-step overhead on SmolLM2-135M, and compare --ray's wall time.

``workers``: GRPO steps of the default model (SmolLM2-135M-Instruct, fp32, CPU) on SVAMP, ``--prompts``
prompts x 8 roots, up to ``--max-new-tokens`` tokens, with ``rollout_workers`` = 0 (no Ray), 1 and 2 on a
local cluster. Ray's share of a step is ``ray/overhead_s``: the weight broadcast (to numpy +
``ray.put``), the slowest worker's weight pull + copy, and the rest of the collection wall time that
no worker spent generating (requests, results, (de)serialization); printed as a fraction of the
step (goal: <= 10%).

``compare``: ``deepgrpo compare`` on the testbed, 2 strategies x 2 seeds, run as separate processes:
locally (1 torch thread, and the default threads) and with ``--ray`` (2 runs at once, 1 CPU each);
wall times and whether results.csv matches (apart from the wall-time columns).

    pip install 'deepgrpo[ray]'
    python benchmarks/bench_ray.py workers [--steps 2] [--warmup 1] [--max-new-tokens 64] [--prompts 2] [--workers 0 1 2]
    python benchmarks/bench_ray.py compare [--token-budget 20000]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deepgrpo_agent import GRPOConfig, GRPOTrainer


def workers(args: argparse.Namespace) -> None:
    rows = []
    for n in args.workers:
        with tempfile.TemporaryDirectory() as out:
            cfg = GRPOConfig(env_id="MathReasoning-SVAMP-v0", model="default", prompts_per_step=args.prompts, group_size=8,
                             max_new_tokens=args.max_new_tokens, learning_rate=1e-6, total_steps=100, eval_every=0,
                             save_every=0, tensorboard=False, progress=False, micro_batch_size=16, output_dir=out,
                             rollout_workers=n, device="cpu")
            t0 = time.perf_counter()
            trainer = GRPOTrainer(cfg)
            steps = []
            try:
                for k in range(args.warmup + args.steps):
                    m = trainer.train_step()
                    if k == 0:
                        print(f"  workers={n}: set-up + first step {time.perf_counter() - t0:.1f} s", flush=True)
                    if k >= args.warmup:
                        steps.append(m)
                        print(f"  workers={n} step: {m['perf/step_s']:.1f} s (collect {m['perf/collect_s']:.1f}, update "
                              f"{m['perf/update_s']:.1f}), Ray {m.get('ray/overhead_s', 0.0):.3f} s = broadcast "
                              f"{m.get('ray/broadcast_s', 0.0):.3f} + weights pull {m.get('ray/weights_load_s', 0.0):.3f}"
                              f" + gather {m.get('ray/gather_s', 0.0):.3f}; {m['rollout/generated_tokens']:.0f} tokens",
                              flush=True)
            finally:
                trainer.close_workers()
            del trainer
        step = statistics.mean(m["perf/step_s"] for m in steps)
        overhead = statistics.mean(m.get("ray/overhead_s", 0.0) for m in steps)
        rows.append((n, step, statistics.mean(m["perf/collect_s"] for m in steps), overhead,
                     statistics.mean(m.get("ray/broadcast_s", 0.0) for m in steps),
                     statistics.mean(m.get("ray/weights_load_s", 0.0) for m in steps),
                     statistics.mean(m.get("ray/gather_s", 0.0) for m in steps)))
    print(f"\nSmolLM2-135M, GRPO {args.prompts} x 8, max_new_tokens {args.max_new_tokens}, CPU; mean of {args.steps} steps; "
          f"load {os.getloadavg()[0]:.1f}")
    print("| rollout_workers | step s | collect s | Ray overhead s | share of step | broadcast s | pull s | gather s |")
    print("|---|---|---|---|---|---|---|---|")
    for n, step, collect, over, bc, pull, gather in rows:
        print(f"| {n} | {step:.1f} | {collect:.1f} | {over:.3f} | {over / step:.1%} | {bc:.3f} | {pull:.3f} | {gather:.3f} |")


def _table(path: Path) -> list[dict[str, str]]:
    wall = ("train_wall_s_mean", "train_wall_s_std")
    return [{k: v for k, v in r.items() if k not in wall} for r in csv.DictReader(path.open())]


def compare(args: argparse.Namespace) -> None:
    base = [sys.executable, "-m", "deepgrpo_agent.cli", "compare", "--strategies", "grpo", "deep-grpo",
            "--seeds", "0", "1", "--token-budget", str(args.token_budget), "--num-evals", "2",
            "--eval-problems", "128", "--pass-k", "0", "--no-plots"]
    cases = [("local, 1 thread", [], "1"), ("local, default threads", [], None),
             ("--ray, 2 runs at once x 1 CPU", ["--ray", "--ray-num-cpus", "2"], None)]
    walls = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra, threads in cases:
            env = dict(os.environ)
            if threads is not None:
                env["OMP_NUM_THREADS"] = threads
            out = Path(tmp) / f"case{len(walls)}"
            t0 = time.perf_counter()
            done = subprocess.run(base + ["--output-dir", str(out)] + extra, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            walls[name] = (time.perf_counter() - t0, out)
            print(f"  {name}: {walls[name][0]:.1f} s", flush=True)
        ref = walls["local, 1 thread"]
        print(f"\ntestbed, 2 strategies x 2 seeds, {args.token_budget:,} tokens per run; load "
              f"{os.getloadavg()[0]:.1f}")
        print("| runner | wall s | vs local 1 thread | results.csv equal (but wall time) |")
        print("|---|---|---|---|")
        for name, (wall, out) in walls.items():
            same = _table(out / "results.csv") == _table(ref[1] / "results.csv")
            print(f"| {name} | {wall:.1f} | {wall / ref[0]:.2f}x | {same} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    w = sub.add_parser("workers")
    w.add_argument("--steps", type=int, default=2)
    w.add_argument("--warmup", type=int, default=1)
    w.add_argument("--max-new-tokens", type=int, default=64)
    w.add_argument("--prompts", type=int, default=2)
    w.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    c = sub.add_parser("compare")
    c.add_argument("--token-budget", type=int, default=20_000)
    args = parser.parse_args()
    workers(args) if args.what == "workers" else compare(args)


if __name__ == "__main__":
    main()
