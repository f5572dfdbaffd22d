"""Stable-Baselines3 PPO next to deepgrpo's GRPO on Arithmetic-v0's easiest level, at equal token budgets.

Both algorithms start from scratch (PPO: a fresh ``MultiInputPolicy``; GRPO: ``model="random-tiny"``, a
random-init 2-layer Llama) on the same env config as ``examples/sb3_ppo_arithmetic.py``: level 1 (one
operation), operands up to ``--max-operand`` (default 3: 42 distinct problems, answers 0..9) and a
three-token response budget. Both train on the same reward: the env's 1.0 for a correct ``=<answer>``
plus a small bonus for any ``=<digit>`` (PPO through the library's ``FormatReward`` wrapper, GRPO
through a verifier that adds the same bonus, since its trainer builds its own vector envs).

The x axis is environment steps, which here are generated tokens: one PPO step writes one token,
and GRPO counts the tokens its rollouts generate (``budget/generated_tokens``). Each run stops at
``--tokens`` (PPO rounds up to its 1024-step rollout, GRPO to its 192-token step).

The y axis is one success measure for both: greedy (argmax) decoding on the same ``--eval-problems``
held-out problem indices (the last indices of the problem space, the ones ``GRPOTrainer`` holds out),
counting a response as a success when the env says its answer is correct (``info["correct"]``): the
format bonus never counts. At this level every expression also occurs in training (there are only
42), so this measures the policy on the problem distribution, not generalisation.

GRPO's learning rate (3e-4) is the best of a small sweep (1e-2, 3e-3, 1e-3, 5e-4, 3e-4; std-scaled
advantages and 4 epochs per batch did not help): from 1e-3 up, the policy collapses within ~100 steps
to one constant answer (``=0``, right on 28% of the problems) and stays there. PPO keeps the settings
of ``examples/sb3_ppo_arithmetic.py``. Measured with the defaults (3 seeds): PPO reaches 0.90 greedy
success by 60k tokens and 0.95 +- 0.03 at 300k; GRPO climbs slowly to 0.64 +- 0.15 at 300k, one seed
stuck at 0.45: over its last 100 steps 99% of the groups scored alike (59% all wrong), and a group whose
rewards agree has zero advantage, so nothing is left to learn from (PPO's critic has no such blind spot).

Run (about 8 minutes on 2 busy CPU cores with the defaults: 3 seeds x 300k tokens per algorithm):

    python examples/ppo_vs_grpo_arithmetic.py --out runs/ppo_vs_grpo

It prints the table (mean +- std over seeds per token mark) and writes ``curves.csv`` (one row per
algorithm, seed and mark), ``curves.json`` (the settings, the rows and the summary) and
``ppo_vs_grpo.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from transformers.utils import logging as hf_logging

import deepgrpo_env  # noqa: F401  (registers Arithmetic-v0)
from deepgrpo_agent import GRPOConfig, GRPOTrainer
from deepgrpo_agent.sb3 import token_ppo
from deepgrpo_env import BudgetIsTerminal, FormatReward
from deepgrpo_env.arithmetic import ArithmeticVerifier

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--tokens", type=int, default=300_000, help="generated-token budget of every run")
parser.add_argument("--eval-every", type=int, default=30_000, help="tokens between evaluations")
parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for both algorithms")
parser.add_argument("--max-operand", type=int, default=3, help="largest operand (3: answers 0..9)")
parser.add_argument("--response-tokens", type=int, default=3, help="response budget ('=', digit, <eos>)")
parser.add_argument("--format-bonus", type=float, default=0.1, help="training reward for writing '=<digit>'")
parser.add_argument("--eval-problems", type=int, default=128, help="held-out problems per evaluation")
parser.add_argument("--ppo-lr", type=float, default=1e-3, help="PPO Adam learning rate")
parser.add_argument("--grpo-lr", type=float, default=3e-4, help="GRPO AdamW learning rate")
parser.add_argument("--out", type=Path, default=Path("runs/ppo_vs_grpo"), help="output directory")
parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: <out>/ppo_vs_grpo.png)")
parser.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
args = parser.parse_args()
if args.tokens % args.eval_every:
    parser.error(f"--tokens ({args.tokens}) must be a multiple of --eval-every ({args.eval_every})")
if not 0.0 <= args.format_bonus < 0.5:
    # The env calls an answer correct when its score exceeds 0.5; a bonus that large would count too.
    parser.error(f"--format-bonus must lie in [0, 0.5), got {args.format_bonus}")
if args.eval_every < 1024 or args.eval_every < 64 * args.response_tokens:
    # One evaluation per mark needs marks further apart than a PPO rollout (16 envs x 64 steps) and
    # a GRPO step (8 prompts x 8 responses x the response budget).
    parser.error(f"--eval-every must be >= 1024 and >= 64 x --response-tokens, got {args.eval_every}")
torch.set_num_threads(1)  # both networks are tiny; one thread is fastest
hf_logging.disable_progress_bar()  # no "Writing model shards" bar when GRPO saves its final model
args.out.mkdir(parents=True, exist_ok=True)

ENV_KWARGS = {"level": 1, "max_operand": args.max_operand, "max_response_tokens": args.response_tokens}
MARKS = list(range(0, args.tokens + 1, args.eval_every))  # token marks where both curves are read

# The held-out problems: GRPOTrainer evaluates on the last `eval_problems` indices of the problem space.
NUM_PROBLEMS = len(gym.make("Arithmetic-v0", **ENV_KWARGS).unwrapped.core.source)
EVAL_INDICES = np.arange(NUM_PROBLEMS - args.eval_problems, NUM_PROBLEMS)


# -- PPO (Stable-Baselines3), as in examples/sb3_ppo_arithmetic.py -----------------------------------
def make_ppo_env() -> gym.Env:
    env = BudgetIsTerminal(gym.make("Arithmetic-v0", **ENV_KWARGS))
    return FormatReward(env, bonus=args.format_bonus, pattern=r"=\d")


def ppo_greedy_success(model: PPO, eval_env: gym.Env) -> float:
    """Fraction of the held-out problems PPO's argmax policy answers correctly."""
    correct = 0
    for index in EVAL_INDICES:
        obs, _ = eval_env.reset(options={"problem_index": int(index)})
        done = False
        while not done:
            obs, _, terminated, truncated, info = eval_env.step(int(model.predict(obs, deterministic=True)[0]))
            done = terminated or truncated
        correct += bool(info["correct"])
    return correct / len(EVAL_INDICES)


class TokenMarkEval(BaseCallback):
    """Evaluates before training and after the update of each rollout that crossed an ``every`` mark.

    SB3 has no hook after an update, so the check runs when the next rollout starts (and once more at
    the end): like GRPO's, each point is the policy updated on every token counted in its x value.
    """

    def __init__(self, every: int, record: list[tuple[int, float]]) -> None:
        super().__init__()
        self.every, self.record, self.next_mark = every, record, every
        self.eval_env = gym.make("Arithmetic-v0", **ENV_KWARGS)  # no bonus: success is correctness only

    def _on_training_start(self) -> None:
        self.record.append((0, ppo_greedy_success(self.model, self.eval_env)))

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_mark:
            self.record.append((self.num_timesteps, ppo_greedy_success(self.model, self.eval_env)))
            self.next_mark = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        self._on_rollout_start()


def run_ppo(seed: int) -> list[tuple[int, float]]:
    """PPO's curve: ``(timesteps, greedy held-out success)`` at every mark; the settings of
    ``examples/sb3_ppo_arithmetic.py`` (episodes of three steps: no discounting, Monte-Carlo returns)."""
    vec_env = make_vec_env(make_ppo_env, n_envs=16, seed=seed)
    model = token_ppo(vec_env, learning_rate=args.ppo_lr, ent_coef=0.01, seed=seed)
    record: list[tuple[int, float]] = []
    model.learn(total_timesteps=args.tokens, callback=TokenMarkEval(args.eval_every, record))
    return record


# -- GRPO (deepgrpo) ---------------------------------------------------------------------------------
class AnswerWithFormatBonus:
    """The env's verifier plus ``bonus`` for an ``=<digit>`` anywhere: PPO's training reward, as a verifier.

    Scores stay below 0.5 unless the answer is right, so the env's ``correct`` flag (score > 0.5)
    still means a correct answer.
    """

    inline_safe = True  # a regex and a string compare on three characters: safe in-process

    def __init__(self, bonus: float) -> None:
        self.bonus = bonus
        self.answer = ArithmeticVerifier()

    def __call__(self, response: str, reference: str) -> float:
        return self.answer(response, reference) + (self.bonus if re.search(r"=\d", response) else 0.0)


def run_grpo(seed: int) -> list[tuple[int, float]]:
    """GRPO's curve: ``(generated tokens, greedy held-out success)`` at every mark."""
    config = GRPOConfig(
        env_id="Arithmetic-v0",
        env_kwargs={**ENV_KWARGS, "verifier": AnswerWithFormatBonus(args.format_bonus)},
        model="random-tiny",
        device="cpu",
        seed=seed,
        prompts_per_step=8,
        group_size=8,
        max_new_tokens=args.response_tokens,
        total_steps=10**9,  # the token budget ends the run
        max_generated_tokens=args.tokens,
        learning_rate=args.grpo_lr,
        micro_batch_size=64,
        eval_every=0,
        eval_every_tokens=args.eval_every,
        eval_problems=args.eval_problems,
        pass_k=0,  # greedy accuracy only
        save_every=0,
        tensorboard=False,
        progress=False,
        output_dir=str(args.out / f"grpo-seed{seed}"),
    )
    trainer = GRPOTrainer(config)
    if not np.array_equal(trainer.eval_indices, EVAL_INDICES):
        raise RuntimeError("GRPOTrainer holds out other problems than the PPO evaluation uses.")
    trainer.train()
    return [(int(e["budget/generated_tokens"]), e["eval/accuracy"]) for e in trainer.eval_history]


# -- both, seed by seed ------------------------------------------------------------------------------
rows: list[dict] = []
print(f"Arithmetic-v0 {ENV_KWARGS}, format bonus {args.format_bonus}, {args.tokens} tokens per run, "
      f"seeds {args.seeds}, greedy success on {args.eval_problems} held-out problems")
for seed in args.seeds:
    for algo, run in (("ppo", run_ppo), ("grpo", run_grpo)):
        start = time.perf_counter()
        curve = run(seed)
        secs = time.perf_counter() - start
        if len(curve) != len(MARKS):
            raise RuntimeError(f"{algo} seed {seed}: {len(curve)} evaluations, expected {len(MARKS)}.")
        for mark, (tokens, success) in zip(MARKS, curve):
            rows.append({"algo": algo, "seed": seed, "tokens": mark, "generated_tokens": tokens,
                         "success": success})
        print(f"  {algo:>4} seed {seed}: final success {curve[-1][1]:.3f} "
              f"after {curve[-1][0]} tokens, {secs:.0f} s")

# Mean and std over seeds at each mark.
summary = {
    algo: {
        "mean": [float(np.mean([r["success"] for r in rows if r["algo"] == algo and r["tokens"] == m]))
                 for m in MARKS],
        "std": [float(np.std([r["success"] for r in rows if r["algo"] == algo and r["tokens"] == m]))
                for m in MARKS],
    }
    for algo in ("ppo", "grpo")
}
print(f"\ngreedy held-out success, mean +- std over {len(args.seeds)} seed(s)")
print(f"{'tokens':>8} | {'PPO (SB3)':>15} | {'GRPO (deepgrpo)':>15}")
for k, mark in enumerate(MARKS):
    ppo, grpo = summary["ppo"], summary["grpo"]
    print(f"{mark:>8} | {ppo['mean'][k]:>7.3f} +- {ppo['std'][k]:.3f} | {grpo['mean'][k]:>7.3f} +- {grpo['std'][k]:.3f}")

with open(args.out / "curves.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
(args.out / "curves.json").write_text(
    json.dumps({"env": ENV_KWARGS, "settings": settings, "marks": MARKS, "summary": summary, "rows": rows},
               indent=1)
)
print(f"\nwrote {args.out / 'curves.csv'} and {args.out / 'curves.json'}")

if not args.no_plot:
    try:
        import matplotlib
    except ImportError as e:
        raise SystemExit("The plot needs matplotlib: pip install matplotlib (or pass --no-plot)") from e
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, label in (("ppo", "PPO (Stable-Baselines3)"), ("grpo", "GRPO (deepgrpo, random-init tiny Llama)")):
        mean, std = np.array(summary[algo]["mean"]), np.array(summary[algo]["std"])
        ax.plot(MARKS, mean, marker="o", markersize=3, label=label)
        ax.fill_between(MARKS, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("generated tokens (env steps)")
    ax.set_ylabel(f"greedy success, {args.eval_problems} held-out problems")
    ax.set_ylim(0, 1)
    ax.set_title(f"Arithmetic-v0 level 1, operands <= {args.max_operand}, "
                 f"{args.response_tokens}-token budget ({len(args.seeds)} seeds, mean +- std)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    plot = args.plot or args.out / "ppo_vs_grpo.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(plot, dpi=120)
    print(f"wrote {plot}")
