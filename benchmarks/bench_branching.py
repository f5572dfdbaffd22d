"""Branching cost: K continuations from one restored env state vs decoding their new tokens alone.

``branch_rollouts`` restores the state into K sub-envs, prefills prompt + prefix once, expands the KV
cache K times and decodes until every branch has ended, stepping the env each token. The baseline
decodes exactly the same tokens (same rows, same lengths) from a session whose cache already holds the
prefix, with no env, restore or prefill. The ratio says what restoring and prefilling add on top of
the unavoidable decode (goal: <= 1.1).

    PYTHONPATH=. python benchmarks/bench_branching.py [--branches 8] [--depth 128] [--new-tokens 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from bench_decode import load_model

from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.rollout import branch_rollouts, collect_rollouts
from deepgrpo_env.problems import Problem
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.state import EnvState
from deepgrpo_env.vector import ReasoningVectorEnv

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


class ByteCodec:
    """Bytes as token ids 3..258 inside a model-sized vocabulary; id 2 stops (for the random model)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.stop_token_ids = (2,)

    def encode(self, text: str) -> list[int]:
        return [3 + b for b in text.encode()]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - 3 for i in ids if 3 <= i < 259).decode(errors="replace")

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        return self.encode(user + "\n")

    def fingerprint(self) -> str:
        return f"bytes-{self.vocab_size}"


def make_codec(model: Any, name: str) -> Any:
    if name.startswith("SmolLM2"):
        from transformers import AutoTokenizer

        from deepgrpo_env.codec import HFCodec

        return HFCodec(AutoTokenizer.from_pretrained(model.name_or_path))
    return ByteCodec(model.config.vocab_size)


def pivot_state(venv: ReasoningVectorEnv, engine: HFEngine, depth: int, seed: int) -> EnvState:
    """A live state ``depth`` tokens into a sampled response (shallower if the sample stops earlier)."""
    batch = collect_rollouts(
        venv,
        engine,
        [0],
        1,
        SamplingParams(max_new_tokens=depth),
        generator=torch.Generator().manual_seed(seed),
    )
    reached = len(batch.new_ids[0])
    return batch.prefix_state(0, reached if not batch.terminated[0] else reached - 1)


def time_branches(
    venv: Any, engine: HFEngine, state: EnvState, k: int, params: SamplingParams, seed: int
) -> tuple[float, np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    batch = branch_rollouts(venv, engine, [state], k, params, generator=generator)
    elapsed = time.perf_counter() - start
    return elapsed, np.array([len(x) for x in batch.new_ids])


def time_decode_only(
    engine: HFEngine, state: EnvState, lengths: np.ndarray, params: SamplingParams, seed: int
) -> float:
    """Decodes ``lengths[j]`` tokens in row j from an already-prefilled, already-expanded cache."""
    session = engine.start(
        [np.concatenate([state.prompt_ids, state.response_ids])], params, repeat=len(lengths)
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for t in range(int(lengths.max())):
        tokens, _, _ = session.sample(generator)
        if t + 1 < lengths.max():
            session.advance(tokens, lengths > t + 1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--depth", type=int, default=128, help="response tokens before the pivot")
    parser.add_argument("--new-tokens", type=int, default=64, help="max new tokens per branch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="auto", choices=["auto", "default", "random"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, name = load_model(args.model, device, torch.float32)
    codec = make_codec(model, name)
    venv = ReasoningVectorEnv(
        args.branches,
        problems=[Problem("bench-0", QUESTION, "72")],
        tokenizer=codec,
        verifier=None,
        prompt=PromptTemplate(style="gsm8k-hash"),
        max_prompt_tokens=512,
        max_response_tokens=args.depth + args.new_tokens,
        autoreset_mode="Disabled",
        copy=False,
    )
    engine = HFEngine(model, vocab_size=codec.vocab_size)
    state = pivot_state(venv, engine, args.depth, seed=0)
    params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens)
    print(f"model: {name} on {device}, {torch.get_num_threads()} threads")
    print(
        f"pivot: prompt {len(state.prompt_ids)} + prefix {state.depth} tokens; {args.branches} branches "
        f"of up to {args.new_tokens} new tokens"
    )

    time_branches(venv, engine, state, args.branches, SamplingParams(max_new_tokens=2), 0)  # warm-up
    # Every run uses the same seed, so every run decodes the same tokens and the best times compare.
    branch_runs, decode_runs = [], []
    for r in range(args.repeats):
        elapsed, lengths = time_branches(venv, engine, state, args.branches, params, seed=0)
        branch_runs.append(elapsed)
        decode_runs.append(time_decode_only(engine, state, lengths, params, seed=0))
        print(
            f"  run {r}: branches {elapsed:.3f} s, decode alone {decode_runs[-1]:.3f} s, "
            f"{lengths.sum()} new tokens (lengths {lengths.min()}..{lengths.max()})"
        )
    best_branch, best_decode = min(branch_runs), min(decode_runs)
    print(f"branch_rollouts : {best_branch:7.3f} s (restore + prefill once + expand + decode + env steps)")
    print(f"decode alone    : {best_decode:7.3f} s")
    print(f"ratio branch/decode-alone: {best_branch / best_decode:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
