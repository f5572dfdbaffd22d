"""One GRPO training step: deepgrpo's GRPOTrainer vs TRL's GRPOTrainer, same model and settings.

Both: the default model (SmolLM2-135M-Instruct, CPU), 2 prompts x 8 completions, up to 128
new tokens, temperature 1, beta = 0 (no reference model), one optimizer step per generation batch,
lr 1e-6, the same GSM8K-test questions in the same chat template and instruction, a last-number
reward, no activation checkpointing (TRL's default turns it on; we turn it off on both sides). Rows
whose advantage is exactly 0 are skipped by deepgrpo's update (exactly, see update.py) and not by
TRL's, which is part of the difference when groups have zero variance. Each side runs ``--warmup`` untimed steps (allocation of optimizer state etc.) and then
``--steps`` timed ones; the ratio of mean step times is printed (wall time, and the process's CPU
time, which a machine shared with other jobs distorts less; run with OMP_NUM_THREADS=1 for that), with the fraction of the machine's
matmul peak of the dtype (measured in the same run) that our decode and update reach.

``--dtypes`` runs both sides in each dtype: ``float32``, and ``bfloat16`` = our mixed precision (fp32
master weights, bf16 autocast update, bf16 rollout copy; docs/precision.md) against TRL's ``bf16=True``
(its autocast on the CPU). ``--skip both`` times our step with and without the exact zero-advantage
skip, so both ratios come from one run: the ratio at the same dtype and the ratio to TRL's best dtype.

    pip install trl   # only for this benchmark, in its own venv
    python benchmarks/bench_grpo_step.py [--steps 2] [--warmup 1] [--dtypes float32,bfloat16] [--skip both]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from deepgrpo_agent import GRPOConfig, GRPOTrainer
from deepgrpo_agent.default_model import default_model_dir
from deepgrpo_env.datasets import load_dataset
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.verifiers import NumericVerifier

ENV_ID = "MathReasoning-GSM8K-test-v0"


def matmul_peak(seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    n = 2048
    a, b, c = (torch.randn(n, n).to(dtype) for _ in range(3))
    torch.mm(a, b, out=c)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=c)
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start)


def ours(args: argparse.Namespace, out: str, dtype: str, skip: bool) -> list[dict[str, float]]:
    cfg = GRPOConfig(env_id=ENV_ID, model="default", dtype=dtype, prompts_per_step=2, group_size=8,  # type: ignore[arg-type]
                     max_new_tokens=args.max_new_tokens, kl_coef=0.0, learning_rate=1e-6, total_steps=100,
                     eval_every=0, save_every=0, tensorboard=False, progress=False, micro_batch_size=16,
                     skip_zero_advantage_rows=skip, output_dir=out)
    trainer = GRPOTrainer(cfg)
    records = []
    for k in range(args.warmup + args.steps):
        start, cpu = time.perf_counter(), time.process_time()
        metrics = trainer.train_step()
        metrics["wall_s"] = time.perf_counter() - start
        metrics["cpu_s"] = time.process_time() - cpu
        if k >= args.warmup:
            records.append(metrics)
            print(f"  deepgrpo {dtype} skip={'on' if skip else 'off'} step: {metrics['wall_s']:.1f} s, cpu {metrics['cpu_s']:.1f} s "
                  f"(collect {metrics['perf/collect_s']:.1f}, "
                  f"update {metrics['perf/update_s']:.1f}, {metrics['rollout/generated_tokens']:.0f} tokens)",
                  flush=True)
    return records


def trl_steps(args: argparse.Namespace, out: str, dtype: str) -> list[tuple[float, float]]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer as TRLTrainer

    template = PromptTemplate()
    problems = load_dataset("gsm8k", "test")[: 2 * (args.warmup + args.steps) * 4]
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": template.text(p.question)}], "reference": p.reference}
        for p in problems
    ])
    verifier = NumericVerifier()

    def reward(completions: list[Any], reference: list[str], **_: Any) -> list[float]:
        texts = [c[0]["content"] if isinstance(c, list) else str(c) for c in completions]
        return [float(verifier(t, r) or 0.0) for t, r in zip(texts, reference)]

    times: list[tuple[float, float]] = []  # (wall s, process cpu s) per step

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append((time.perf_counter() - self.start, time.process_time() - self.cpu))
            print(f"  TRL {dtype} step: {times[-1][0]:.1f} s, cpu {times[-1][1]:.1f} s (load {_load()})", flush=True)

    path = default_model_dir()
    config = TRLConfig(
        output_dir=out, num_generations=8, per_device_train_batch_size=16, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, beta=0.0, temperature=1.0, top_p=1.0, learning_rate=1e-6,
        use_cpu=True, bf16=dtype == "bfloat16", report_to=[], logging_steps=1, save_strategy="no",
        max_steps=args.warmup + args.steps, shuffle_dataset=False, seed=0,
        gradient_checkpointing=False,  # deepgrpo does not checkpoint activations either
    )
    trainer = TRLTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                         processing_class=AutoTokenizer.from_pretrained(path), reward_funcs=reward,
                         args=config, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    return times[args.warmup:]


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    parser.add_argument("--skip", choices=["on", "off", "both"], default="both",
                        help="our exact zero-advantage skip (off = TRL's amount of update work)")
    parser.add_argument("--skip-trl", action="store_true")
    args = parser.parse_args()
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            raise SystemExit(f"--dtypes: expected float32 and/or bfloat16, got {d!r}")
    skips = {"on": [True], "off": [False], "both": [False, True]}[args.skip]
    params = 134.5e6
    peaks: dict[str, list[float]] = {d: [] for d in dtypes}
    ours_s: dict[tuple[str, bool], tuple[float, float]] = {}
    trl_s: dict[str, tuple[float, float]] = {}
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in dtypes:
            for skip in skips:
                peaks[d].append(matmul_peak(dtype=getattr(torch, d)))  # next to the run it scales (load drifts)
                peak = peaks[d][-1]
                print(f"deepgrpo {d}, skip {'on' if skip else 'off'} (load {_load()}, matmul peak "
                      f"{peak / 1e9:.1f} GFLOP/s)", flush=True)
                mine = ours(args, f"{tmp}/ours-{d}-{skip}", d, skip)
                ours_s[d, skip] = (statistics.mean(m["wall_s"] for m in mine), statistics.mean(m["cpu_s"] for m in mine))
                gen = sum(m["rollout/generated_tokens"] for m in mine)
                collect = sum(m["perf/collect_s"] for m in mine)
                processed = sum(m["train/processed_tokens"] for m in mine) * 1.0
                computed = sum(m.get("train/computed_tokens", m["train/processed_tokens"]) for m in mine) * 1.0
                upd = max(sum(m["perf/update_s"] for m in mine), 1e-9)
                lines.append(
                    f"deepgrpo {d:8s} skip {'on ' if skip else 'off'}: {ours_s[d, skip][0]:.1f} s/step (cpu "
                    f"{ours_s[d, skip][1]:.1f} s); decode {2 * params * gen / collect / 1e9:.1f} GFLOP/s "
                    f"({2 * params * gen / collect / peak:.1%} of peak); update {6 * params * computed / upd / 1e9:.1f} "
                    f"GFLOP/s computed ({6 * params * computed / upd / peak:.1%} of peak), "
                    f"{6 * params * processed / upd / 1e9:.1f} GFLOP/s of unshared work "
                    f"({6 * params * processed / upd / peak:.1%})")
            if not args.skip_trl:
                peaks[d].append(matmul_peak(dtype=getattr(torch, d)))
                print(f"TRL {d} (load {_load()}, matmul peak {peaks[d][-1] / 1e9:.1f} GFLOP/s)", flush=True)
                steps = trl_steps(args, f"{tmp}/trl-{d}", d)
                trl_s[d] = (statistics.mean(w for w, _ in steps), statistics.mean(c for _, c in steps))
    print()
    for d in dtypes:
        print(f"{d} matmul peak (2048^2 torch.mm, measured before each run): "
              + ", ".join(f"{p / 1e9:.1f}" for p in peaks[d]) + " GFLOP/s")
    print("(decode: 2 x params x generated tokens / collect time; update: 6 x params x tokens / update time, where "
          "'computed' counts a shared prompt once and 'unshared' counts it per row, as a trainer without prefix "
          "sharing computes it; % of the peak measured just before the run)")
    for line in lines:
        print(line)
    for d, (t, c) in trl_s.items():
        print(f"TRL      {d:8s}          : {t:.1f} s/step (cpu {c:.1f} s)")
    if trl_s:
        for k, what in ((0, "wall"), (1, "cpu")):
            best = min(trl_s, key=lambda d: trl_s[d][k])
            for (d, skip), t in ours_s.items():
                same = f"{t[k] / trl_s[d][k]:.2f}x TRL {d}" if d in trl_s else "TRL not run at this dtype"
                print(f"ratio ({what} time) deepgrpo {d} skip {'on ' if skip else 'off'}: {same}; "
                      f"{t[k] / trl_s[best][k]:.2f}x TRL at its best ({best})")
    print(f"load at the end: {_load()}")


if __name__ == "__main__":
    main()
