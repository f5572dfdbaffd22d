"""Environment speed: vector-env token-steps/s, single-env step cost, snapshot time and memory.

Prints figures measured in one run. The vector env is measured without grading (``verifier=None``)
and with episodes long enough that resets are rare, i.e. the per-token cost a rollout engine pays.

    python benchmarks/bench_env.py [--num-envs 64] [--steps 2000]
"""

from __future__ import annotations

import argparse
import pickle
import time
import tracemalloc

import numpy as np

from deepgrpo_env import ReasoningEnv, ReasoningVectorEnv
from deepgrpo_env.default_model import default_tokenizer


def vector_throughput(num_envs: int, steps: int, copy: bool, tokenizer: object) -> float:
    venv = ReasoningVectorEnv(
        num_envs, "svamp:test", tokenizer=tokenizer, verifier=None, max_response_tokens=steps + 1,
        autoreset_mode="Disabled", copy=copy,
    )
    venv.reset(seed=0)
    rng = np.random.default_rng(0)
    # Non-stop token ids, drawn up front so the loop times the env alone.
    actions = rng.integers(100, 40_000, size=(steps, num_envs))
    start = time.perf_counter()
    for t in range(steps):
        venv.step(actions[t])
    elapsed = time.perf_counter() - start
    return num_envs * steps / elapsed


def single_step_cost(steps: int, tokenizer: object) -> float:
    env = ReasoningEnv("svamp:test", tokenizer=tokenizer, verifier=None, max_response_tokens=steps + 1)
    env.reset(seed=0)
    start = time.perf_counter()
    for t in range(steps):
        env.step(100 + t % 1000)
    return (time.perf_counter() - start) / steps


def _snapshots_along_episode(env: ReasoningEnv, depth: int, count: int) -> tuple[list, float]:
    """Takes ``count`` snapshots spread evenly over one ``depth``-token episode; returns them and the time."""
    env.reset(seed=0)
    per_depth = np.bincount(np.linspace(0, depth - 1, count).astype(int), minlength=depth)
    states, taken = [], 0.0
    for t in range(depth):
        start = time.perf_counter()
        states.extend(env.snapshot() for _ in range(per_depth[t]))
        taken += time.perf_counter() - start
        if t < depth - 1:
            env.step(100 + t)
    return states, taken


def snapshot_cost(tokenizer: object, depth: int = 512, count: int = 1000) -> None:
    env = ReasoningEnv("svamp:test", tokenizer=tokenizer, verifier=None, max_response_tokens=depth)
    states, taken = _snapshots_along_episode(env, depth, count)
    del states
    tracemalloc.start()  # a second pass for memory: tracemalloc slows allocation, so not timed
    before = tracemalloc.take_snapshot()
    states, _ = _snapshots_along_episode(env, depth, count)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    mem = sum(s.size_diff for s in after.compare_to(before, "filename"))
    naive = sum(s.prompt_ids.nbytes + s.response_ids.nbytes for s in states)
    pickled = len(pickle.dumps(states[-1]))
    sample = states[:: max(1, count // 100)]
    start = time.perf_counter()
    for s in sample:
        env.reset_to(s)
    restore = (time.perf_counter() - start) / len(sample)
    print(f"  {len(states)} snapshots along one {depth}-token episode: {taken * 1e3:.2f} ms total, "
          f"{taken / len(states) * 1e6:.2f} us each; memory {mem / 1024:.1f} KiB total "
          f"({mem / len(states):.0f} B each; copying prompt+response per snapshot would hold "
          f"{naive / 1024:.0f} KiB); restore {restore * 1e6:.1f} us; one pickled deepest state "
          f"{pickled / 1024:.1f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    tok = default_tokenizer()
    print(f"vector env, {args.num_envs} envs x {args.steps} steps (SmolLM2 tokenizer, no grading):")
    fast = vector_throughput(args.num_envs, args.steps, copy=False, tokenizer=tok)
    slow = vector_throughput(args.num_envs, args.steps, copy=True, tokenizer=tok)
    print(f"  copy=False: {fast:,.0f} token-steps/s (goal >= 2,000,000)")
    print(f"  copy=True : {slow:,.0f} token-steps/s (ratio copy=False / copy=True = {fast / slow:.2f})")
    cost = single_step_cost(args.steps, tok)
    print(f"single env step(): {cost * 1e6:.2f} us per call; vector env per sub-env token: "
          f"{1e6 / fast:.3f} us (ratio single/vector per token = {cost * fast:.1f})")
    snapshot_cost(tok)


if __name__ == "__main__":
    main()
