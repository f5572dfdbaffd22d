"""Paired-by-seed differences of a `deepgrpo compare` run against a baseline strategy, with 95% t intervals.

    python scripts/paired_stats.py runs/util_tb1 --baseline deep-grpo

Reads every ``<output_dir>/<strategy>/seed<k>/result.json`` (written by `deepgrpo compare`) and each run's
``metrics.jsonl`` (for the per-step pivot metrics), and prints a Markdown table per strategy: mean over
seeds of greedy / sampled accuracy and pass@k at the end, mixed-outcome pivot fraction and mixed pivots
per 1000 branch tokens over training, and the paired difference to the baseline (mean, 95% CI from the
t distribution with n - 1 degrees of freedom, paired t). A difference "separates" only when its interval
excludes 0. (A stop-gap until `deepgrpo compare` reports paired statistics itself.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# two-sided 95% quantiles of Student's t, by degrees of freedom (no scipy needed)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}

METRICS = (("final_accuracy", "greedy"), ("final_sample_accuracy", "sampled"), ("final_pass_at_k", "pass@4"),
           ("mixed_fraction", "mixed pivots"), ("mixed_per_kilotoken", "mixed / 1k branch tok"))


def t975(df: int) -> float:
    keys = sorted(T975)
    return T975[max(k for k in keys if k <= df)] if df >= 1 else float("nan")


def load(out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for result in sorted(out.glob("*/seed*/result.json")):
        rec = json.loads(result.read_text())
        steps = [json.loads(line) for line in (result.parent / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [s for s in steps if s.get("kind") == "train"]
        for key in ("mixed_fraction", "mixed_per_kilotoken"):
            vals = [s[f"pivot/{key}"] for s in steps if isinstance(s.get(f"pivot/{key}"), float)]
            rec[key] = float(np.nanmean(vals)) if vals else float("nan")
        runs.setdefault(rec["strategy"], {})[int(rec["seed"])] = rec
    return runs


def paired(a: list[float], b: list[float]) -> tuple[float, float, float, int]:
    d = np.asarray(a) - np.asarray(b)
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        return (float(d[0]) if n else float("nan")), float("nan"), float("nan"), n
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = t975(n - 1) * sd / math.sqrt(n)
    t = mean / (sd / math.sqrt(n)) if sd > 0 else float("inf") * np.sign(mean)
    return mean, half, float(t), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    parser.add_argument("--baseline", default="deep-grpo")
    args = parser.parse_args()
    runs = load(Path(args.output_dir))
    if args.baseline not in runs:
        raise SystemExit(f"Expected baseline {args.baseline!r} among the finished strategies {sorted(runs)}.")
    base = runs[args.baseline]
    print("| strategy | seeds | " + " | ".join(label for _, label in METRICS) + " |")
    print("|---" * (len(METRICS) + 2) + "|")
    for name, by_seed in runs.items():
        cells = []
        for key, _ in METRICS:
            vals = [by_seed[s][key] for s in sorted(by_seed)]
            cells.append(f"{np.nanmean(vals):.3f} ± {np.nanstd(vals, ddof=1) if len(vals) > 1 else 0:.3f}")
        print(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " |")
    print(f"\nPaired by seed, minus {args.baseline}: mean difference [95% CI] (paired t)\n")
    print("| strategy | seeds | " + " | ".join(label for _, label in METRICS) + " |")
    print("|---" * (len(METRICS) + 2) + "|")
    for name, by_seed in runs.items():
        if name == args.baseline:
            continue
        seeds = sorted(set(by_seed) & set(base))
        cells = []
        for key, _ in METRICS:
            m, h, t, n = paired([by_seed[s][key] for s in seeds], [base[s][key] for s in seeds])
            cells.append(f"{m:+.3f} [{m - h:+.3f}, {m + h:+.3f}] (t = {t:.1f})" if n > 1 else f"{m:+.3f} (1 seed, no CI)")
        print(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
