"""Cost of a DEEP-GRPO step vs a GRPO step on the same root rollouts, with its breakdown.

Both trainers start from the same weights and seed, so their root rollouts are identical; the
DEEP-GRPO step adds pivot branches (prefill of each pivot's prefix once, decode of the branch
suffixes) and trains on them too. Prints the breakdown (root prefill+decode, branch prefill, branch
decode, update) and the overhead beyond "GRPO step + branch decode" (issue goal: <= 10%).

    python benchmarks/bench_deep_step.py [--env-id MathReasoning-SVAMP-v0] [--prompts 2] [--group-size 8]
        [--branches 8] [--max-new-tokens 128] [--steps 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from deepgrpo_agent import DeepGRPOConfig, DeepGRPOTrainer, GRPOConfig, GRPOTrainer


def run(trainer: GRPOTrainer, steps: int) -> list[dict[str, float]]:
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        metrics = trainer.train_step()
        metrics["wall_s"] = time.perf_counter() - start
        out.append(metrics)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="MathReasoning-SVAMP-v0")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    common = dict(env_id=args.env_id, model="default", prompts_per_step=args.prompts, group_size=args.group_size,
                  max_new_tokens=args.max_new_tokens, total_steps=args.steps, learning_rate=1e-6,
                  eval_every=0, save_every=0, tensorboard=False, progress=False, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        grpo = run(GRPOTrainer(GRPOConfig(output_dir=f"{tmp}/g", **common)), args.steps)  # type: ignore[arg-type]
        deep = run(DeepGRPOTrainer(DeepGRPOConfig(output_dir=f"{tmp}/d", branches_per_pivot=args.branches,
                                                  **common)), args.steps)  # type: ignore[arg-type]
    for k, (g, d) in enumerate(zip(grpo, deep)):
        root_g = g["perf/root_prefill_s"] + g["perf/root_decode_s"]
        root_d = d["perf/root_prefill_s"] + d["perf/root_decode_s"]
        bp, bd = d.get("perf/branch_prefill_s", 0.0), d.get("perf/branch_decode_s", 0.0)
        print(f"step {k}: GRPO {g['wall_s']:.1f} s = roots {root_g:.1f} + update {g['perf/update_s']:.1f} "
              f"({g['train/trained_tokens']:.0f} trained tokens)")
        print(f"        DEEP-GRPO {d['wall_s']:.1f} s = roots {root_d:.1f} + branch prefill {bp:.1f} + branch "
              f"decode {bd:.1f} + update {d['perf/update_s']:.1f} ({d['train/trained_tokens']:.0f} trained "
              f"tokens); {d['pivot/count']:.0f} pivots, {d['pivot/count'] * args.branches:.0f} branches, "
              f"{d['pivot/branch_generated_tokens']:.0f} branch tokens")
        bound = g["wall_s"] + bd
        print(f"        DEEP-GRPO / (GRPO + branch decode) = {d['wall_s'] / bound:.2f} (goal <= 1.10); "
              f"overhead beyond it: branch prefill {bp / bound:.1%}, extra update "
              f"{(d['perf/update_s'] - g['perf/update_s']) / bound:.1%}")


if __name__ == "__main__":
    main()
