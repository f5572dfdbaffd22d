"""Exploration strategies side by side at an equal generated-token budget, step by step.

What ``deepgrpo compare`` does, written out: every strategy trains the same initial policy on the
same env, once per seed, until it has generated the same number of tokens (root rollouts plus
branches, docs/methods.md §5); all runs are evaluated on the same held-out problems at the same token
marks (greedy, and sampled at the training temperature); the table reports mean ± std over seeds. Runs are checkpointed in their own directories,
so running the script again after an interruption continues where it stopped.

Defaults: the shipped testbed policy (a 643k-parameter Llama trained on arithmetic solutions with
slips, see ``scripts/train_testbed.py``) on Arithmetic-v0, five strategies, five seeds.

    python examples/compare_strategies.py                      # the README table (about 21 min, 2 CPU cores)
    python examples/compare_strategies.py --quick              # a 1-minute smoke version
    python examples/compare_strategies.py --strategies grpo grpo-n16 grpo-n32 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from deepgrpo_agent.compare import (
    STRATEGIES,
    CompareConfig,
    plot_comparison,
    print_table,
    run_one,
    summarize,
    write_tables,
)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--strategies", nargs="+", default=["grpo", "deep-grpo", "erpo", "treerl", "uniform-tree"],
                    choices=sorted(STRATEGIES), help="strategy names (deepgrpo compare --list describes them)")
parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
parser.add_argument("--token-budget", type=int, default=None, help="generated tokens per run")
parser.add_argument("--quick", action="store_true", help="tiny budget and eval set: checks the pipeline only")
parser.add_argument("--output-dir", default="runs/compare-example")
args = parser.parse_args()

# 1. One config for the whole comparison. Everything but the strategy is shared: env, initial
#    policy, trainer settings, token budget and the held-out problems.
defaults = CompareConfig()
budget = args.token_budget or (6_000 if args.quick else defaults.token_budget)
cfg = CompareConfig(
    strategies=tuple(args.strategies),
    seeds=tuple(args.seeds),
    token_budget=budget,
    num_evals=2 if args.quick else defaults.num_evals,
    eval_problems=32 if args.quick else defaults.eval_problems,
    output_dir=args.output_dir,
)
print(f"{len(cfg.strategies)} strategies x {len(cfg.seeds)} seeds, {cfg.token_budget:,} generated tokens each, "
      f"on {cfg.env_id} {cfg.env_kwargs} from {cfg.model!r}")

# 2. Train every (strategy, seed). Seeds form the outer loop so that a cut comparison already has
#    every strategy at its first seeds. run_one builds the strategy's trainer config (its algorithm's
#    dataclass, the shared values, the strategy's own values), trains until the budget is spent with
#    evaluations every budget/num_evals tokens, and returns the run's record; a finished run is read
#    back from its directory, a cut one resumes from its last checkpoint.
records = []
for seed in cfg.seeds:
    for name in cfg.strategies:
        start = time.perf_counter()
        record = run_one(cfg, name, seed)
        records.append(record)
        print(f"{name:14s} seed {seed}: held-out sampled accuracy {record['initial_sample_accuracy']:.3f} -> "
              f"{record['final_sample_accuracy']:.3f}, greedy {record['initial_accuracy']:.3f} -> "
              f"{record['final_accuracy']:.3f} after {record['generated_tokens']:,} tokens, "
              f"{record['steps']} steps ({time.perf_counter() - start:.0f} s)")

# 3. Aggregate over seeds, write runs.csv / results.csv / results.json, plot and print the table.
summary = summarize(cfg, records)
out = Path(cfg.output_dir)
write_tables(out, records, summary)
try:
    for path in plot_comparison(cfg, records, out):
        print(f"plot: {path}")
except ImportError as e:
    print(f"no plots: {e}")
print_table(summary)
