"""Screens the default model's greedy accuracy and truncation per dataset and prompt style.

Used to choose the main job's task (docs/main_job.md): a task where the base model is right 10-60%
of the time gives GRPO a learning signal. Prints one table row per (dataset, prompt, budget).

    python benchmarks/screen_tasks.py --problems 64 --dtype bf16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import envs_registry  # noqa: F401  (registers the ids)
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.evaluation import evaluate_policy
from deepgrpo_agent.policy import load_policy, resolve_dtype

DATASETS = {"svamp": "svamp:test", "mawps": "mawps:test", "gsm8k": "gsm8k:test", "math500": "math500:test"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", type=int, default=64)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--datasets", default="svamp,mawps,gsm8k,math500")
    ap.add_argument("--prompts", default="boxed,plain,gsm8k-hash")
    ap.add_argument("--budgets", default="128")
    ap.add_argument("--chat", default="1", help="1 = chat template, 0 = plain text, 0,1 = both")
    ap.add_argument("--instruction", default=None, help="instruction text replacing the style's (e.g. a brevity request)")
    ap.add_argument("--offset", type=int, default=0, help="first problem index screened")
    args = ap.parse_args()
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    model, tok = load_policy("default", device=torch.device("cpu"), dtype=dtype)
    model.eval()
    engine = HFEngine(model, vocab_size=len(tok))
    print("| dataset | prompt | chat | budget | accuracy | truncated | mean length | s | uptime load |")
    print("|---|---|---|---|---|---|---|---|---|")
    from deepgrpo_env.prompts import PromptTemplate

    for ds in args.datasets.split(","):
        for style in args.prompts.split(","):
            for chat in [c == "1" for c in args.chat.split(",")]:
                for budget in [int(b) for b in args.budgets.split(",")]:
                    env = gym.make_vec("MathReasoning-v0", num_envs=args.problems, autoreset_mode="Disabled",
                                       copy=False, problems=DATASETS[ds], tokenizer=tok,
                                       prompt=PromptTemplate(style=style, chat=chat, instruction=args.instruction),  # type: ignore[arg-type]
                                       max_response_tokens=budget, max_prompt_tokens=1024)
                    idx = list(range(args.offset, args.offset + args.problems))
                    t0 = time.perf_counter()
                    m = evaluate_policy(env, engine, idx, max_new_tokens=budget)
                    dt = time.perf_counter() - t0
                    env.close()
                    acc = m["eval/accuracy"]
                    se = float(np.sqrt(acc * (1 - acc) / args.problems))
                    load = Path("/proc/loadavg").read_text().split()[0]
                    print(f"| {ds} | {style if args.instruction is None else repr(args.instruction)} | {int(chat)} | {budget} | {acc:.3f} ± {se:.3f} | "
                          f"{m['eval/truncated_fraction']:.2f} | {m['eval/response_length']:.0f} | {dt:.0f} | {load} |",
                          flush=True)


if __name__ == "__main__":
    main()
