"""Decode speed: HFEngine vs transformers' ``model.generate`` on the same model, batch and lengths.

Both sample (temperature 1, no top-k/top-p) exactly ``--new-tokens`` tokens for ``--batch`` prompts of
``--prompt-len`` random token ids, prefill included. Also prints the fraction of this machine's fp32
matmul peak that decoding reaches (peak measured with a large ``torch.mm`` loop in the same run,
decode FLOPs estimated as 2 x parameters x generated tokens, attention over the cache ignored).

The model is SmolLM2-135M: the real checkpoint when deepgrpo's cache holds it, else a random-init model
with its config (same shapes, same speed).

    PYTHONPATH=. python benchmarks/bench_decode.py [--batch 8] [--prompt-len 128] [--new-tokens 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams


def smollm2_config() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )


def load_model(kind: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, str]:
    """The real SmolLM2-135M-Instruct if cached (``auto``/``default``), else a random-init one."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if kind in ("auto", "default"):
        from deepgrpo_env.default_model import cache_dir

        path = cache_dir() / "SmolLM2-135M-Instruct-fp32"
        if (path / "model.safetensors").is_file():
            loaded: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
            return loaded.to(device).eval(), f"SmolLM2-135M-Instruct ({path})"
        if kind == "default":
            raise FileNotFoundError(
                f"No converted default model at {path}; run deepgrpo_agent.default_model.default_model_dir() first."
            )
    torch.manual_seed(0)
    model: Any = LlamaForCausalLM(smollm2_config())
    return model.to(device=device, dtype=dtype).eval(), "random-init model with SmolLM2-135M's config"


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of square matmuls (the practical peak this device and dtype reach)."""
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=c)
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(4):
            torch.mm(a, b, out=c)
        _sync(device)
        count += 4
    return 2.0 * n**3 * count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(engine: HFEngine, prompts: np.ndarray, new_tokens: int, seed: int) -> tuple[float, float]:
    """Seconds for prefill and for decoding ``new_tokens`` tokens of every row."""
    device = engine.device
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    generator = torch.Generator(device=device).manual_seed(seed)
    active = np.ones(prompts.shape[0], dtype=bool)
    _sync(device)
    start = time.perf_counter()
    session = engine.start(list(prompts), params)
    _sync(device)
    prefilled = time.perf_counter()
    for t in range(new_tokens):
        tokens, _, _ = session.sample(generator)
        if t + 1 < new_tokens:
            session.advance(tokens, active)
    _sync(device)
    return prefilled - start, time.perf_counter() - prefilled


def run_generate(model: Any, prompts: np.ndarray, new_tokens: int, seed: int) -> float:
    """Seconds for ``model.generate`` to sample ``new_tokens`` tokens per row (prefill included)."""
    device = next(model.parameters()).device
    ids = torch.from_numpy(prompts).to(device)
    torch.manual_seed(seed)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
    _sync(device)
    elapsed = time.perf_counter() - start
    if out.shape[1] != prompts.shape[1] + new_tokens:
        raise RuntimeError(
            f"generate returned {out.shape[1] - prompts.shape[1]} new tokens, not {new_tokens}."
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--model", default="auto", choices=["auto", "default", "random"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each; the best is kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch's default); use 1 on a busy machine",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, name = load_model(args.model, device, dtype)
    engine = HFEngine(model)
    rng = np.random.default_rng(0)
    prompts = rng.integers(100, 40_000, size=(args.batch, args.prompt_len)).astype(np.int64)
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    print(
        f"model: {name}, {params / 1e6:.1f}M parameters, {args.dtype} on {device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"batch {args.batch}, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens per row")

    # Warm-up (allocator, kernels), then alternate the two so drifts hit both alike.
    run_engine(engine, prompts[:, :16], 4, 0)
    run_generate(model, prompts[:, :16], 4, 0)
    engine_runs, generate_runs = [], []
    for r in range(args.repeats):
        engine_runs.append(run_engine(engine, prompts, args.new_tokens, r))
        generate_runs.append(run_generate(model, prompts, args.new_tokens, r))
    prefill_s, decode_s = min(engine_runs, key=sum)
    engine_s, generate_s = prefill_s + decode_s, min(generate_runs)
    tokens = args.batch * args.new_tokens
    print(
        f"HFEngine        : {engine_s:7.3f} s  {tokens / engine_s:8.1f} tok/s  "
        f"(prefill {prefill_s:.3f} s, decode {decode_s:.3f} s = {tokens / decode_s:.1f} tok/s)"
    )
    print(f"model.generate  : {generate_s:7.3f} s  {tokens / generate_s:8.1f} tok/s")
    print(f"speed ratio engine/generate (tok/s, prefill included): {generate_s / engine_s:.2f}x")

    peak = matmul_peak(device, dtype)
    achieved = 2.0 * params * tokens / decode_s
    print(f"matmul peak     : {peak / 1e9:8.1f} GFLOP/s ({args.dtype} torch.mm)")
    print(
        f"decode FLOP rate: {achieved / 1e9:8.1f} GFLOP/s = {achieved / peak:.1%} of peak "
        "(2 x params x tokens)"
    )


if __name__ == "__main__":
    main()
