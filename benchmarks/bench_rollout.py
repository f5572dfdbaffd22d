"""The RL rollout workload: env-driven engine rollouts vs ``model.generate`` on real prompts.

Unlike ``bench_decode.py`` (fixed lengths), rows here stop at their own EOS, as in training: real
SVAMP prompts in the default model's chat template, sampled at temperature 1 until a stop token or
``--new-tokens``. The engine path is the trainer's: ``collect_rollouts`` on the native vector env
(env stepping and grading included), which drops ended rows from the KV cache. ``generate`` keeps
computing every row until the longest one ends. Both are timed on the same prompts with the same
budget; sampled lengths differ (different random streams), so the figure of merit is generated
tokens per second, and the script also prints the mean length each produced.

    python benchmarks/bench_rollout.py [--prompts 4] [--group-size 8] [--new-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import deepgrpo_env  # noqa: F401  (registers the ids)
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.policy import load_policy
from deepgrpo_agent.rollout import collect_rollouts


def engine_run(venv: Any, engine: HFEngine, indices: list[int], group: int, new: int, seed: int) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    batch = collect_rollouts(venv, engine, indices, group, SamplingParams(1.0, 1.0, new), generator=gen)
    return time.perf_counter() - start, batch.generated_tokens


def generate_run(model: Any, prompts: list[np.ndarray], group: int, new: int, stops: list[int], seed: int) -> tuple[float, int]:
    rows = [p for p in prompts for _ in range(group)]
    width = max(len(p) for p in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(rows):  # left padding, as generate expects for decoder-only models
        ids[i, width - len(p):] = torch.from_numpy(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=new, eos_token_id=stops, pad_token_id=stops[0])
    elapsed = time.perf_counter() - start
    new_ids = out[:, width:]
    tokens = 0
    for row in new_ids.tolist():  # count up to and including the first stop token
        n = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
        tokens += n
    return elapsed, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_policy("default", device=torch.device("cpu"), dtype=torch.float32)
    model.eval()
    n = args.prompts * args.group_size
    venv = gym.make_vec("MathReasoning-SVAMP-v0", num_envs=n, autoreset_mode="Disabled", copy=False,
                        tokenizer=tok, max_response_tokens=args.new_tokens)
    engine = HFEngine(model, vocab_size=venv.single_action_space.n)
    stops = list(venv.codec.stop_token_ids)
    results: dict[str, list[tuple[float, int]]] = {"engine": [], "generate": []}
    for r in range(args.repeats):
        indices = list(range(r * args.prompts, (r + 1) * args.prompts))
        venv.reset(options={"problem_indices": [i for i in indices for _ in range(args.group_size)]})
        prompts = [np.asarray(venv.prompt_ids(k * args.group_size)) for k in range(args.prompts)]
        results["engine"].append(engine_run(venv, engine, indices, args.group_size, args.new_tokens, r))
        results["generate"].append(generate_run(model, prompts, args.group_size, args.new_tokens, stops, r))
        for name in results:
            t, k = results[name][-1]
            print(f"  repeat {r} {name:8s}: {t:6.1f} s, {k} tokens ({k / n:.0f}/row), {k / t:6.1f} tok/s")
    rate = {name: sum(k for _, k in v) / sum(t for t, _ in v) for name, v in results.items()}
    print(f"rollouts of {args.prompts} prompts x {args.group_size}, <= {args.new_tokens} new tokens, stop at EOS:")
    print(f"  engine (env-driven, ended rows dropped): {rate['engine']:.1f} tok/s")
    print(f"  model.generate:                          {rate['generate']:.1f} tok/s")
    print(f"  ratio engine / generate = {rate['engine'] / rate['generate']:.2f} (goal >= 1.5)")


if __name__ == "__main__":
    main()
