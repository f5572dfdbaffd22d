"""bf16 autocast vs fp32 log-probs of the default model on real text (docs/precision.md).

Scores GSM8K-test reference solutions (natural text, the kind of tokens a policy emits) as responses
to their questions under the chat template, once in fp32 and once under bf16 autocast (the update's
path), and prints the per-token and per-sequence log-prob error, and the ratio exp(logp_bf16 - logp_fp32).

    python benchmarks/bench_precision.py [--rows 8]
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from deepgrpo_agent.policy import load_policy
from deepgrpo_agent.scoring import pack, token_logprobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()
    model, tok = load_policy("default", device=torch.device("cpu"), dtype=torch.float32)
    model.eval()
    lines = (files("deepgrpo_env") / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()[: args.rows]
    contexts, targets = [], []
    for line in lines:
        row = json.loads(line)
        prompt = tok.apply_chat_template([{"role": "user", "content": row["question"]}],
                                         add_generation_prompt=True, tokenize=False)
        contexts.append(np.asarray(tok(prompt, add_special_tokens=False)["input_ids"], dtype=np.int64))
        targets.append(np.asarray(tok(row["answer"], add_special_tokens=False)["input_ids"][: args.max_tokens],
                                  dtype=np.int64))
    batch = pack(contexts, targets, torch.device("cpu"))
    with torch.no_grad():
        t0 = time.perf_counter()
        fp32 = token_logprobs(model, batch)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logprobs(model, batch)
        t2 = time.perf_counter()
        # Variant: body under autocast, LM head in fp32 (bf16 rounding of the logits removed).
        body, head = model.get_decoder(), model.get_output_embeddings()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        index = batch.gather_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        logits = head(torch.gather(hidden.float(), 1, index)).float()
        chosen = torch.gather(logits, -1, batch.targets.unsqueeze(-1)).squeeze(-1)
        fp32_head = (chosen - torch.logsumexp(logits, -1)) * batch.mask
    mask = batch.mask
    err = (bf16 - fp32)[mask].abs()
    seq = ((bf16 - fp32) * mask).sum(1).abs()
    print(f"rows {len(targets)}, target tokens {int(mask.sum())}, mean fp32 log-prob {float(fp32[mask].mean()):.3f}")
    print(f"per-token |logp_bf16 - logp_fp32|: mean {float(err.mean()):.4f}  median {float(err.median()):.4f}  "
          f"p99 {float(err.quantile(0.99)):.4f}  max {float(err.max()):.4f} nats")
    print(f"per-token ratio exp(diff): min {float(torch.exp(-err.max())):.4f} max {float(torch.exp(err.max())):.4f}")
    print(f"per-sequence |sum diff|: mean {float(seq.mean()):.3f}  max {float(seq.max()):.3f} nats")
    err_h = (fp32_head - fp32)[mask].abs()
    print(f"with the LM head in fp32: per-token mean {float(err_h.mean()):.4f}  p99 {float(err_h.quantile(0.99)):.4f}  "
          f"max {float(err_h.max()):.4f} nats")
    print(f"forward time: fp32 {t1 - t0:.1f} s, bf16 autocast {t2 - t1:.1f} s (load {Path('/proc/loadavg').read_text().split()[0]})")


if __name__ == "__main__":
    main()
