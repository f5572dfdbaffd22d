"""Stable-Baselines3 PPO learns Arithmetic-v0's easiest level from the token-level observation.

A classic-RL bridge: the same env an LLM policy trains on, played by an SB3 ``MultiInputPolicy``
(token embeddings and an MLP) that reads the ``Dict`` observation (prompt and response token ids)
and writes one character per step. Level 1 (one operation) with operands up to ``--max-operand``
(default 3: 42 distinct problems) has single-digit answers, so a response budget of three tokens
is enough: ``=``, the digit, ``<eos>``. Rewards are the env's own
(1.0 for a correct ``=<answer>``), plus a small format bonus from the library's ``FormatReward``
wrapper for any ``=<digit>`` so that PPO finds the answer format before it finds answers.

Run (one to two minutes on 2 CPU cores):

    python examples/sb3_ppo_arithmetic.py --timesteps 300000

It prints a learning curve (mean episode reward and success rate per ``--log-every`` timesteps;
``--curve-out curve.csv`` or ``curve.json`` also writes it), then the success rate of the trained
policy next to that of a uniform-random policy. One timestep is one generated token, so the curve's
x axis is the one LLM trainers count; ``examples/ppo_vs_grpo_arithmetic.py`` puts this PPO next to
deepgrpo's GRPO on the same env at equal token budgets.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

import deepgrpo_env  # noqa: F401  (registers Arithmetic-v0)
from deepgrpo_agent.sb3 import token_ppo
from deepgrpo_env import BudgetIsTerminal, FormatReward
from deepgrpo_env.arithmetic import extract_answer

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--timesteps", type=int, default=300_000, help="PPO environment steps")
parser.add_argument("--max-operand", type=int, default=3, help="largest operand (3: answers 0..9)")
parser.add_argument("--format-bonus", type=float, default=0.1, help="reward for writing '=<digit>'")
parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
parser.add_argument("--ent-coef", type=float, default=0.01, help="entropy bonus coefficient")
parser.add_argument("--n-envs", type=int, default=16, help="parallel envs (in-process)")
parser.add_argument("--log-every", type=int, default=20_000, help="timesteps per learning-curve row")
parser.add_argument("--eval-episodes", type=int, default=1000, help="episodes for the final comparison")
parser.add_argument("--seed", type=int, default=0, help="seed for PPO, env resets and evaluation")
parser.add_argument("--curve-out", type=Path, default=None, help="write the learning curve (.csv or .json)")
args = parser.parse_args()
torch.set_num_threads(1)  # the networks are tiny; one thread is fastest

# The env: level 1, answers of one digit, a three-token response budget.
ENV_KWARGS = {"level": 1, "max_operand": args.max_operand, "max_response_tokens": 3}


def make_env() -> gym.Env:
    env = BudgetIsTerminal(gym.make("Arithmetic-v0", **ENV_KWARGS))
    return FormatReward(env, bonus=args.format_bonus, pattern=r"=\d")


class LearningCurve(BaseCallback):
    """Prints (and keeps in ``rows``) mean episode reward and success rate over each ``every`` timesteps.

    ``success`` is the fraction of the training episodes finished in the window whose answer was
    correct (the env's ``info["correct"]``; the format bonus does not count), sampled from the policy.
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.next_row = every, every
        self.rows: list[dict[str, float]] = []
        self.rewards: list[float] = []
        self.correct: list[bool] = []
        self.form: list[bool] = []
        self.start = time.perf_counter()

    def _on_training_start(self) -> None:
        print(
            f"{'timesteps':>10} {'episodes':>9} {'mean_reward':>12} {'success':>8} {'answer_form':>12} {'secs':>6}"
        )

    def _on_step(self) -> bool:
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            if done and "response" in info:
                self.rewards.append(info["episode"]["r"])
                self.correct.append(bool(info["correct"]))
                self.form.append(info["format_ok"])
        if self.num_timesteps >= self.next_row and self.rewards:
            row = {
                "timesteps": self.num_timesteps, "episodes": len(self.rewards),
                "mean_reward": float(np.mean(self.rewards)), "success": float(np.mean(self.correct)),
                "answer_form": float(np.mean(self.form)), "secs": time.perf_counter() - self.start,
            }
            self.rows.append(row)
            print(
                f"{row['timesteps']:>10} {row['episodes']:>9} {row['mean_reward']:>12.3f} "
                f"{row['success']:>8.3f} {row['answer_form']:>12.3f} {row['secs']:>6.0f}"
            )
            self.rewards, self.correct, self.form = [], [], []
            self.next_row += self.every
        return True


def success_rate(policy, episodes: int, seed: int) -> tuple[float, float]:
    """Fractions of correct answers and of responses with an answer, for ``policy(obs) -> action``."""
    env = gym.make("Arithmetic-v0", **ENV_KWARGS)
    correct = form = 0
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs))
            done = terminated or truncated
        correct += bool(info["correct"])
        form += extract_answer(info["response"]) is not None
    return correct / episodes, form / episodes


# PPO on the Dict observation: episodes are 3 steps, so no discounting and plain Monte-Carlo returns.
vec_env = make_vec_env(make_env, n_envs=args.n_envs, seed=args.seed)
model = token_ppo(vec_env, learning_rate=args.lr, ent_coef=args.ent_coef, seed=args.seed)
print(f"PPO on Arithmetic-v0 {ENV_KWARGS}, format bonus {args.format_bonus}, {args.timesteps} timesteps")
curve = LearningCurve(args.log_every)
model.learn(total_timesteps=args.timesteps, callback=curve)
if args.curve_out is not None:
    args.curve_out.parent.mkdir(parents=True, exist_ok=True)
    if args.curve_out.suffix == ".json":
        args.curve_out.write_text(json.dumps({"env": ENV_KWARGS, "rows": curve.rows}, indent=1))
    else:
        with open(args.curve_out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["timesteps", "episodes", "mean_reward", "success",
                                                   "answer_form", "secs"])
            writer.writeheader()
            writer.writerows(curve.rows)
    print(f"wrote the learning curve to {args.curve_out}")

# Trained (greedy) policy against a uniform-random policy, on the env's own reward (no bonus).
rng = np.random.default_rng(args.seed)
n_actions = int(vec_env.action_space.n)
trained = success_rate(lambda obs: int(model.predict(obs, deterministic=True)[0]), args.eval_episodes, 10**6)
uniform = success_rate(lambda obs: int(rng.integers(n_actions)), args.eval_episodes, 10**6)
print(f"\nsuccess rate over {args.eval_episodes} episodes (answer form in parentheses):")
print(f"  trained PPO (greedy): {trained[0]:.3f} ({trained[1]:.3f})")
print(f"  uniform random:       {uniform[0]:.3f} ({uniform[1]:.3f})")
