"""Peak resident memory of an evaluation prefill: SmolLM2-135M in bf16, N held-out MAWPS prompts at once.

Before the fix in ``HFEngine.start`` (the LM head on a contiguous last position, docs/main_job.md,
"Evaluation memory"), torch's CPU bf16 linear copied the 56 MB head weight once per row of a strided
(B, 1, H) input: the peak grew by ~54 MB per row. Prints one line per batch size.

    python benchmarks/bench_eval_memory.py --rows 8,32,200
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import torch

import envs_registry  # noqa: F401  (registers the ids)
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.env_pool import registry_env
from deepgrpo_agent.policy import load_policy


def rss_mb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="8,32,200", help="batch sizes to prefill, comma-separated")
    ap.add_argument("--env-id", default="MathReasoning-MAWPS-SingleOp-v0")
    args = ap.parse_args()
    peak = [0]

    def monitor() -> None:
        while True:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.02)

    threading.Thread(target=monitor, daemon=True).start()
    model, tok = load_policy("default", device=torch.device("cpu"), dtype=torch.float32)
    engine = HFEngine(model, vocab_size=len(tok), dtype=torch.bfloat16)
    for rows in (int(r) for r in args.rows.split(",")):
        venv = registry_env(args.env_id, rows, budget=64, env_kwargs={"prompt": "brief"}, tokenizer=tok)
        venv.reset(options={"reset_mask": np.ones(rows, dtype=bool), "problem_indices": list(range(rows))})
        prompts = [venv.prompt_ids(i) for i in range(rows)]
        base = rss_mb()
        peak[0] = base
        t0 = time.perf_counter()
        session = engine.start(prompts, SamplingParams(0.0, 1.0, 64))
        dt = time.perf_counter() - t0
        time.sleep(0.1)
        load = Path("/proc/loadavg").read_text().split()[0]
        print(f"rows {rows:4d}  prefill {dt:6.1f} s  RSS before {base} MB  peak {peak[0]} MB "
              f"(+{peak[0] - base} MB)  load {load}", flush=True)
        del session
        venv.close()


if __name__ == "__main__":
    main()
