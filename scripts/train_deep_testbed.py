"""Trains the deep testbed policy and ships it: ``deepgrpo_agent/deep_testbed_model/`` (model name "deep-testbed").

Supervised training of the same tiny Llama as the arithmetic testbed (scripts/train_testbed.py) on the
hard-step corpus of scripts/deep_testbed_sft.py (Arithmetic-v0 level 5: easy steps, one hard step, the
last, on prompts where it carries), then held-out greedy / sampled / pass@4 accuracy, split by hard and
easy prompts, into ``recipe.json``. Everything is seeded: a rerun reproduces the weights.

    python scripts/train_deep_testbed.py                 # the shipped recipe
    python scripts/train_deep_testbed.py --steps 400 --hard-correct 0.3 --out runs/deep_testbed
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any

import numpy as np
import torch
from deep_testbed_sft import DeepRecipe, DeepSFTRun, is_hard  # scripts/, next to this script
from testbed_sft import evaluate_testbed, heldout_indices, save_testbed

from deepgrpo_agent.testbed import DEEP_TESTBED_DIR
from deepgrpo_env.arithmetic import ArithmeticSource


def main() -> None:
    d = DeepRecipe()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=d.steps)
    parser.add_argument("--easy-slip", type=float, default=d.easy_slip)
    parser.add_argument("--hard-correct", type=float, default=d.hard_correct)
    parser.add_argument("--hard-step", type=int, default=d.hard_step)
    parser.add_argument("--out", default=str(DEEP_TESTBED_DIR))
    parser.add_argument("--test-problems", type=int, default=256)
    parser.add_argument("--init", default=d.init, help='initial weights: "arithmetic-testbed" (default) or "" (scratch)')
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    recipe = dataclasses.replace(d, steps=args.steps, easy_slip=args.easy_slip, hard_correct=args.hard_correct,
                                 hard_step=args.hard_step, init=args.init)
    run = DeepSFTRun(recipe)
    params = sum(p.numel() for p in run.model.parameters())
    print(f"{params:,} parameters; recipe {dataclasses.asdict(recipe)}", flush=True)
    run.train(recipe.steps, log_every=10)

    t0 = time.perf_counter()
    test = heldout_indices(args.test_problems, recipe.level, recipe.max_operand)
    source = ArithmeticSource(recipe.level, seed=0, max_operand=recipe.max_operand)
    hard = np.array([is_hard(source.expression(i), recipe.hard_step) for i in test])
    report: dict[str, Any] = {"parameters": params, "sft_seconds": round(run.seconds, 1),
                              "final_loss": float(np.mean(run.losses[-20:])),
                              "corpus_skipped_heldout": run.stream.skipped,
                              "test_problems": f"Arithmetic-v0 level {recipe.level} family seed 0, the last {len(test)} indices",
                              "hard_fraction": float(hard.mean())}
    for name, sel in (("all", np.ones_like(hard)), ("hard", hard), ("easy", ~hard)):
        idx = [i for i, s in zip(test, sel) if s]
        m = evaluate_testbed(run.model, idx, level=recipe.level, max_operand=recipe.max_operand, samples=4)
        report[name] = {"problems": len(idx), "greedy_accuracy": m["eval/accuracy"],
                        "sampled_accuracy": m["eval/sample_accuracy"], "pass@4": m["eval/pass@4"],
                        "mean_response_tokens_greedy": m["eval/response_length"]}
    out = save_testbed(run.model, recipe, report, args.out)
    print(json.dumps(report, indent=1))
    print(f"measured in {time.perf_counter() - t0:.0f} s; wrote {out}")


if __name__ == "__main__":
    main()
