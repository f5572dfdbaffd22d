"""Where the update's time goes: the reference path vs the fast paths, per phase, as a fraction of the matmul peak.

The default model (SmolLM2-135M-Instruct, 49k vocabulary) trains 2 GSM8K-test prompts x 8 responses (the
bench_grpo_step setting; response lengths drawn so that half the rows hit ``--max-tokens``), one
micro-batch of 16 rows, in each ``--dtypes`` (bfloat16 = autocast over fp32 master weights). Per path:

- ``forward``: the scoring forward with grad (decoder + LM head + fp32 log-softmax), :func:`update._scores`;
- ``backward``: ``loss.backward()`` of a token-mean surrogate at ratio 1;
- ``optimizer``: one fused AdamW step;
- ``head``: the LM head + log-softmax alone, forward and backward from fixed hidden states (part of the two above).

Paths: ``reference`` (packed rows, the (B, T, V) fp32 log-softmax), ``fused`` (packed rows, the chunked
log-prob on the real target positions), ``fast`` (fused + each prompt computed once per group). Times are
process CPU seconds (1 thread; a shared machine distorts them less than wall time) next to wall seconds;
GFLOP/s count 6 x params x the tokens the path computes (2x forward, 4x backward), and the peak is a
2048^2 ``torch.mm`` loop timed the same way in the same run.

    OMP_NUM_THREADS=1 python benchmarks/bench_update.py [--dtypes bfloat16,float32] [--repeats 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepgrpo_agent import update
from deepgrpo_agent.policy import load_policy
from deepgrpo_agent.precision import Precision
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.scoring import chosen_logprobs, restrict_vocab


class Clock:
    """Wall and process-CPU seconds since construction."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def cpu_matmul_peak(dtype: torch.dtype, seconds: float = 2.0) -> float:
    n = 2048
    a, b, c = (torch.randn(n, n).to(dtype) for _ in range(3))
    torch.mm(a, b, out=c)
    count, clock = 0, Clock()
    while clock.lap()[1] < seconds:
        torch.mm(a, b, out=c)
        count += 1
    return 2.0 * n**3 * count / clock.lap()[1]


def gsm8k_samples(tok: Any, rows: int, max_tokens: int, seed: int) -> TrainSamples:
    lines = (files("deepgrpo_env") / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[:2]
    rng = np.random.default_rng(seed)
    contexts, targets = [], []
    for line in lines:
        text = tok.apply_chat_template([{"role": "user", "content": json.loads(line)["question"]}],
                                       add_generation_prompt=True, tokenize=False)
        ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
        for g in range(rows // 2):
            n = max_tokens if g % 2 else int(rng.integers(max_tokens // 3, max_tokens))
            contexts.append(ids)
            targets.append(rng.integers(100, 40_000, size=n).astype(np.int64))
    adv = rng.standard_normal(len(targets)).astype(np.float32)
    return TrainSamples(contexts, targets, adv, np.zeros(len(targets), dtype=np.int64))


def one_update(model: Any, opt: torch.optim.Optimizer, samples: TrainSamples, settings: update.UpdateSettings,
               precision: Precision) -> dict[str, tuple[float, float]]:
    idx = np.arange(len(samples))
    opt.zero_grad(set_to_none=True)
    clock = Clock()
    logp, mask = update._scores(model, samples, idx, torch.device("cpu"), 1.0, 0, 49152, precision, settings)
    fwd = clock.lap()
    adv = torch.as_tensor(samples.advantages)[:, None]
    loss = -(logp * adv * mask).sum() / mask.sum()
    clock = Clock()
    loss.backward()  # type: ignore[no-untyped-call]
    bwd = clock.lap()
    clock = Clock()
    opt.step()
    return {"forward": fwd, "backward": bwd, "optimizer": clock.lap()}


def head_only(model: Any, n: int, fused: bool, precision: Precision) -> tuple[float, float]:
    """LM head + fp32 log-softmax, forward and backward, for n positions (B = 16 rows of n / 16)."""
    head = model.get_output_embeddings()
    hidden = torch.randn(n, head.weight.shape[1], requires_grad=True)
    targets = torch.randint(0, 49152, (n,))
    clock = Clock()
    with precision.autocast():
        if fused:
            logp = chosen_logprobs(hidden, head, targets, torch.ones(n), vocab_size=49152)
        else:
            logits = restrict_vocab(head(hidden.view(16, n // 16, -1)), 49152).float()
            logp = (logits.gather(-1, targets.view(16, -1, 1))[..., 0] - torch.logsumexp(logits, -1)).flatten()
    logp.sum().backward()  # type: ignore[no-untyped-call]
    return clock.lap()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1, help="timed updates per path (after one warm-up per dtype)")
    args = parser.parse_args()
    model, tok = load_policy("default", device=torch.device("cpu"), dtype=torch.float32)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    samples = gsm8k_samples(tok, args.rows, args.max_tokens, seed=0)
    base = update.UpdateSettings(micro_batch_size=args.rows, max_new_tokens=args.max_tokens,
                                 skip_zero_advantage_rows=False)
    paths = {"reference": dataclasses.replace(base, share_prefix=False, fused_logprobs=False),
             "fused": dataclasses.replace(base, share_prefix=False),
             "fast": base}
    processed = sum(len(c) + len(t) for c, t in zip(samples.contexts, samples.targets))
    n_target = sum(len(t) for t in samples.targets)
    print(f"{len(samples)} rows, prompts {sorted({len(c) for c in samples.contexts})} tokens, {n_target} target "
          f"tokens, {processed} prompt+response tokens; {params / 1e6:.1f}M parameters, {torch.get_num_threads()} "
          f"thread(s), load {Path('/proc/loadavg').read_text().split()[0]}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-9, fused=True)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        precision = Precision(torch.float32, dtype, "cpu")
        peak = cpu_matmul_peak(dtype)
        print(f"\n{name}: matmul peak {peak / 1e9:.1f} GFLOP/s per CPU second (2048^2 torch.mm)")
        one_update(model, opt, samples, paths["fast"], precision)  # warm-up: optimizer state, allocator
        for path, settings in paths.items():
            computed = float(update._computed_tokens(model, samples, np.arange(len(samples)), settings))
            runs = [one_update(model, opt, samples, settings, precision) for _ in range(args.repeats)]
            phases = {k: (min(r[k][0] for r in runs), min(r[k][1] for r in runs)) for k in runs[0]}
            head = head_only(model, n_target // 16 * 16, settings.fused_logprobs, precision)
            flops = {"forward": 2 * params * computed, "backward": 4 * params * computed, "optimizer": 0.0}
            total_cpu = sum(c for _, c in phases.values())
            cells = []
            for k, (w, c) in phases.items():
                rate = f", {flops[k] / c / 1e9:.1f} GFLOP/s = {flops[k] / c / peak:.0%} of peak" if flops[k] else ""
                cells.append(f"{k} {c:.1f} s cpu ({w:.1f} wall{rate})")
            f_all = 6 * params * computed
            print(f"  {path:9s}: {computed:.0f} tokens computed; " + "; ".join(cells)
                  + f"; update {total_cpu:.1f} s cpu = {f_all / total_cpu / 1e9:.1f} GFLOP/s "
                  f"({f_all / total_cpu / peak:.0%} of peak; {6 * params * processed / total_cpu / peak:.0%} counting "
                  f"every row's prompt); of which head+log-softmax {head[1]:.1f} s cpu")
    print(f"load at the end: {Path('/proc/loadavg').read_text().split()[0]}")


if __name__ == "__main__":
    main()
