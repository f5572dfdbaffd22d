"""Trains the arithmetic testbed policy and ships it: ``deepgrpo_agent/testbed_model/``.

Top to bottom: supervised training of a tiny Llama on Arithmetic-v0 solutions with random slips
(the design is in docs/testbed.md, the code in scripts/testbed_sft.py), then the measurements that go into
``recipe.json``: held-out greedy and sampled accuracy, and how recoverable the sampled failures are
(branches from just before the first wrong line vs from the root). Everything is seeded.

    python scripts/train_testbed.py            # the shipped recipe: ~3 min on 2 idle CPU cores, then measures
    python scripts/train_testbed.py --steps 600 --snapshot-every 100 --snapshots runs/testbed
    python scripts/train_testbed.py --resume runs/testbed/step_0300.pt --steps 300   # ship that snapshot

The learning rate is constant after warm-up, so a run's snapshot at step N equals a fresh run of N
steps: ``--resume SNAPSHOT`` with ``--steps`` equal to the snapshot's step only measures and ships it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from testbed_sft import (  # scripts/testbed_sft.py, next to this script
    HELDOUT_GUARD,
    Recipe,
    SFTRun,
    evaluate_testbed,
    heldout_indices,
    save_testbed,
    slip_rate,
    slip_recoverability,
)

from deepgrpo_agent.testbed import TESTBED_DIR


def validation_indices(recipe: Recipe, count: int) -> list[int]:
    """Problems for choosing the step count: inside the corpus's held-out guard, below the test slice."""
    last = heldout_indices(HELDOUT_GUARD, recipe.level, recipe.max_operand)
    return last[:count]


def main() -> None:
    defaults = Recipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps in total")
    parser.add_argument("--slip-prob", type=float, default=defaults.slip_prob)
    parser.add_argument("--fix-prob", type=float, default=defaults.fix_prob)
    parser.add_argument("--out", default=str(TESTBED_DIR), help="where the weights and recipe.json go")
    parser.add_argument("--resume", help="continue from a snapshot written with --snapshots")
    parser.add_argument("--snapshots", help="directory for resumable snapshots (with --snapshot-every)")
    parser.add_argument("--snapshot-every", type=int, default=0, help="also report validation accuracy then")
    parser.add_argument("--test-problems", type=int, default=512, help="held-out problems for the final numbers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.resume:
        run = SFTRun.from_snapshot(args.resume)
        print(f"resumed at step {run.step} ({run.seconds:.0f} s of training so far)")
    else:
        recipe = dataclasses.replace(defaults, steps=args.steps, slip_prob=args.slip_prob, fix_prob=args.fix_prob)
        run = SFTRun(recipe)
    recipe = dataclasses.replace(run.recipe, steps=args.steps)
    params = sum(p.numel() for p in run.model.parameters())
    print(f"{params:,} parameters; corpus slip rates {slip_rate(recipe, 4000)}")

    val = validation_indices(recipe, 128)

    def snapshot(r: SFTRun) -> None:
        if args.snapshots:
            path = r.save_snapshot(Path(args.snapshots) / f"step_{r.step:04d}.pt")
            print(f"  snapshot {path}")
        m = evaluate_testbed(r.model, val, level=recipe.level, max_operand=recipe.max_operand, samples=4)
        print(f"  validation (128 problems): greedy {m['eval/accuracy']:.3f}  sampled {m['eval/sample_accuracy']:.3f}",
              flush=True)

    run.train(args.steps, every=args.snapshot_every, on_every=snapshot)

    print("measuring on the held-out test slice ...", flush=True)
    t0 = time.perf_counter()
    test = heldout_indices(args.test_problems, recipe.level, recipe.max_operand)
    acc = evaluate_testbed(run.model, test, level=recipe.level, max_operand=recipe.max_operand, samples=4)
    recover = slip_recoverability(run.model, test, level=recipe.level, max_operand=recipe.max_operand)
    report: dict[str, Any] = {
        "parameters": params,
        "sft_seconds": round(run.seconds, 1),
        "final_loss": sum(run.losses[-20:]) / len(run.losses[-20:]),
        "corpus_skipped_heldout": run.stream.skipped,
        "test_problems": f"Arithmetic-v0 family seed 0, the last {args.test_problems} indices",
        "greedy_accuracy": acc["eval/accuracy"],
        "sampled_accuracy": acc["eval/sample_accuracy"],
        "pass@4": acc["eval/pass@4"],
        "mean_response_tokens_greedy": acc["eval/response_length"],
        "recoverability": recover,
    }
    out = save_testbed(run.model, recipe, report, args.out)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(json.dumps(report, indent=1))
    print(f"measured in {time.perf_counter() - t0:.0f} s; wrote {out} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
