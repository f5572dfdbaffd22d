"""The deep-testbed recoverability probe split by prompt kind: hard prompts (the last step carries) vs easy ones.

    deepgrpo recoverability --model deep-testbed --env-kwargs '{"level": 5, "max_operand": 9}' --failed 64 \\
        --branches 8 --problems 256 --output-dir runs/recoverability/deep_testbed
    python scripts/deep_testbed_probe_split.py runs/recoverability/deep_testbed/positions.csv

A failed trajectory of a hard prompt usually failed at the hard (last) step, so by design every state
before that step is as recoverable as the root; a failed easy prompt failed at a slip, after which nothing
recovers. The probe's pooled curve mixes the two; this prints them apart (per candidate index: positions,
P(any of K succeeds), per-branch success, fraction with mixed outcomes).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict

from deep_testbed_sft import DeepRecipe, is_hard  # scripts/, next to this script

from deepgrpo_env.arithmetic import ArithmeticSource


def split_table(rows: list[dict[str, str]], level: int, max_operand: int, hard_step: int) -> str:
    """Markdown rows (kind, candidate index, positions, P(any), per-branch success, mixed) of the probe's positions."""
    source = ArithmeticSource(level, seed=0, max_operand=max_operand)
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    trajectories: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        kind = "hard" if is_hard(source.expression(int(row["problem_index"])), hard_step) else "easy"
        successes, branches = int(row["successes"]), int(row["branches"])
        acc = sums[(kind, int(row["candidate"]))]
        acc[0] += 1
        acc[1] += successes > 0
        acc[2] += successes / branches
        acc[3] += 0 < successes < branches
        trajectories[kind].add(row["trajectory"])
    lines = ["| prompts | failed trajectories | candidate index | positions | P(any of K) | per-branch success | mixed |",
             "|---|---|---|---|---|---|---|"]
    for (kind, candidate), (n, any_success, per_branch, mixed) in sorted(sums.items()):
        lines.append(f"| {kind} | {len(trajectories[kind])} | {candidate} | {n} | {any_success / n:.3f} "
                     f"| {per_branch / n:.3f} | {mixed / n:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("positions_csv", help="positions.csv written by `deepgrpo recoverability`")
    args = parser.parse_args()
    with open(args.positions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "problem_index" not in rows[0]:
        raise SystemExit(f"Expected a positions.csv of `deepgrpo recoverability` with a problem_index column, got {args.positions_csv}.")
    recipe = DeepRecipe()
    print(split_table(rows, recipe.level, recipe.max_operand, recipe.hard_step))


if __name__ == "__main__":
    main()
