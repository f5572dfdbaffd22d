"""What one decode step's linears cost per row: fp32 vs bf16, 1 to 64 rows, on the bare op.

A SmolLM2-135M decode step runs 30 layers x 7 linears (q, k, v, o, gate, up, down) on one new token per
row. This times those 210 ``torch.nn.functional.linear`` calls back to back, with random weights of the
model's shapes (cold: 210 distinct weights, ~140 MB in bf16, cycled as the model does), for each
``--rows`` and dtype, and prints ms per step and the cost of 32 rows relative to 1. When that ratio is
near 1 the step is bound by reading the weights, and an engine's per-row savings (dropping ended rows,
no padded rows) buy little; docs/vllm.md, "Measured", uses this to explain the bf16 ratios.

    python benchmarks/bench_linear.py [--rows 1,8,16,32,64] [--dtypes float32,bfloat16] [--repeats 6]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

HIDDEN, KV, MLP, LAYERS = 576, 192, 1536, 30
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (MLP, HIDDEN), (MLP, HIDDEN), (HIDDEN, MLP)]


def step_ms(weights: list[torch.Tensor], rows: int, repeats: int) -> float:
    """Best-of-``repeats`` milliseconds for one pass over ``weights`` with ``rows`` input rows."""
    xs = [torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights]
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for w, x in zip(weights, xs):
                torch.nn.functional.linear(x, w)
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="1,8,16,32,64")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    one, five, fifteen = os.getloadavg()
    print(f"{LAYERS} layers x {len(SHAPES)} linears, torch threads {torch.get_num_threads()}, "
          f"load average {one:.2f} {five:.2f} {fifteen:.2f}")
    torch.manual_seed(0)
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        weights = [torch.randn(n, k, dtype=dtype) for n, k in SHAPES * LAYERS]
        times = {r: step_ms(weights, r, args.repeats) for r in rows}
        cells = "  ".join(f"{r} rows {t:6.1f} ms" for r, t in times.items())
        ratio = f"; 32 rows / 1 row: {times[32] / times[1]:.2f}x" if 1 in times and 32 in times else ""
        print(f"{name:9s}: {cells}{ratio}")


if __name__ == "__main__":
    main()
