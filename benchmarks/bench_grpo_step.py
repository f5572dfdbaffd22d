"""One GRPO training step: deepgrpo's GRPOTrainer vs TRL's GRPOTrainer, same model and settings.

Both: the default model (SmolLM2-135M-Instruct, fp32, CPU), 2 prompts x 8 completions, up to 128
new tokens, temperature 1, beta = 0 (no reference model), one optimizer step per generation batch,
lr 1e-6, the same GSM8K-test questions in the same chat template and instruction, a last-number
reward, no activation checkpointing (TRL's default turns it on; we turn it off on both sides). Rows
whose advantage is exactly 0 are skipped by deepgrpo's update (exactly, see update.py) and not by
TRL's, which is part of the difference when groups have zero variance. Each side runs ``--warmup`` untimed steps (allocation of optimizer state etc.) and then
``--steps`` timed ones; the ratio of mean step times is printed, with the fraction of the machine's
fp32 matmul peak (measured in the same run) that our decode and update reach.

    pip install trl   # only for this benchmark
    python benchmarks/bench_grpo_step.py [--steps 2] [--warmup 1] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch

from deepgrpo_agent import GRPOConfig, GRPOTrainer
from deepgrpo_agent.default_model import default_model_dir
from deepgrpo_env.datasets import load_dataset
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.verifiers import NumericVerifier

ENV_ID = "MathReasoning-GSM8K-test-v0"


def matmul_peak(seconds: float = 2.0) -> float:
    n = 2048
    a, b, c = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
    torch.mm(a, b, out=c)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b, out=c)
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - start)


def ours(args: argparse.Namespace, out: str) -> list[dict[str, float]]:
    cfg = GRPOConfig(env_id=ENV_ID, model="default", prompts_per_step=2, group_size=8,
                     max_new_tokens=args.max_new_tokens, kl_coef=0.0, learning_rate=1e-6, total_steps=100,
                     eval_every=0, save_every=0, tensorboard=False, progress=False, micro_batch_size=16,
                     skip_zero_advantage_rows=not args.no_skip_zero_adv, output_dir=out)
    trainer = GRPOTrainer(cfg)
    records = []
    for k in range(args.warmup + args.steps):
        start = time.perf_counter()
        metrics = trainer.train_step()
        metrics["wall_s"] = time.perf_counter() - start
        if k >= args.warmup:
            records.append(metrics)
            print(f"  deepgrpo step: {metrics['wall_s']:.1f} s (collect {metrics['perf/collect_s']:.1f}, "
                  f"update {metrics['perf/update_s']:.1f}, {metrics['rollout/generated_tokens']:.0f} tokens)",
                  flush=True)
    return records


def trl_steps(args: argparse.Namespace, out: str) -> list[float]:
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

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.start)
            print(f"  TRL step: {times[-1]:.1f} s", flush=True)

    path = default_model_dir()
    config = TRLConfig(
        output_dir=out, num_generations=8, per_device_train_batch_size=16, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, beta=0.0, temperature=1.0, top_p=1.0, learning_rate=1e-6,
        use_cpu=True, bf16=False, report_to=[], logging_steps=1, save_strategy="no",
        max_steps=args.warmup + args.steps, shuffle_dataset=False, seed=0,
        gradient_checkpointing=False,  # deepgrpo does not checkpoint activations either
    )
    trainer = TRLTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                         processing_class=AutoTokenizer.from_pretrained(path), reward_funcs=reward,
                         args=config, train_dataset=data, callbacks=[Timer()])
    trainer.train()
    return times[args.warmup:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--no-skip-zero-adv", action="store_true",
                        help="also compute zero-advantage rows in our update (TRL's amount of update work)")
    args = parser.parse_args()
    peak = matmul_peak()
    with tempfile.TemporaryDirectory() as tmp:
        mine = ours(args, f"{tmp}/ours")
        theirs = [] if args.skip_trl else trl_steps(args, f"{tmp}/trl")
    params = 134.5e6
    ours_s = statistics.mean(m["wall_s"] for m in mine)
    gen = sum(m["rollout/generated_tokens"] for m in mine)
    collect = sum(m["perf/collect_s"] for m in mine)
    print(f"\nfp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    processed = sum(m["train/processed_tokens"] for m in mine) * 1.0
    update = sum(m["perf/update_s"] for m in mine)
    print(f"deepgrpo: {ours_s:.1f} s/step; decode {2 * params * gen / collect / 1e9:.1f} GFLOP/s "
          f"({2 * params * gen / collect / peak:.1%} of peak, 2 x params x generated tokens / collect time); "
          f"update {6 * params * processed / max(update, 1e-9) / 1e9:.1f} GFLOP/s "
          f"({6 * params * processed / max(update, 1e-9) / peak:.1%} of peak, 6 x params x prompt+response "
          f"tokens of the trained rows / update time)")
    if theirs:
        trl_s = statistics.mean(theirs)
        print(f"TRL:      {trl_s:.1f} s/step")
        print(f"ratio deepgrpo / TRL = {ours_s / trl_s:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
