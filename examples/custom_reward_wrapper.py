"""Train GRPO and DEEP-GRPO with your own verifier, written as a reward wrapper of the vector env.

The wrapper below grades Arithmetic-v0 answers itself: 1.0 for the right number, 0.5 for a number
off by one (partial credit the env's exact-match verifier never gives), 0 otherwise. The trainers
take it through an env factory ``make_env(num_envs) -> vector env``, which they use for the root,
branch (DEEP-GRPO's pivots are restored through the wrapper with ``reset_to``) and evaluation envs.
The same wrapper can instead be named in a YAML config:
``env_wrappers: ["my_module:OffByOneCredit"]``.

    python examples/custom_reward_wrapper.py                 # 20 steps of each, about 2 min on 2 CPU cores
    python examples/custom_reward_wrapper.py --steps 2       # a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import gymnasium as gym
import numpy as np

from deepgrpo_agent import DeepGRPOConfig, DeepGRPOTrainer, GRPOConfig, GRPOTrainer
from deepgrpo_agent.callbacks import Callback
from deepgrpo_agent.testbed import TESTBED, TESTBED_ENV_KWARGS, TESTBED_MAX_NEW_TOKENS
from deepgrpo_env.arithmetic import extract_answer
from deepgrpo_env.vector_wrappers import EpisodeRewardWrapper


class OffByOneCredit(EpisodeRewardWrapper):
    """A user-written verifier: full credit for the right answer, half credit one off, 0 otherwise."""

    def episode_rewards(self, rewards: Any, info: dict[str, Any], rows: Any) -> Any:
        scores = []
        for r in rows:
            answer, reference = extract_answer(str(info["response"][r])), int(info["reference"][r])
            scores.append(0.0 if answer is None else {0: 1.0, 1: 0.5}.get(abs(int(answer) - reference), 0.0))
        self.set_scores(info, rows, scores)  # the env grades nothing (verifier=None): these are the scores
        rewards[rows] = scores
        return rewards


def make_env(num_envs: int) -> Any:
    venv = gym.make_vec("Arithmetic-v0", num_envs=num_envs, autoreset_mode="Disabled", copy=False,
                        **TESTBED_ENV_KWARGS, max_response_tokens=TESTBED_MAX_NEW_TOKENS, verifier=None)
    return OffByOneCredit(venv)


class Rewards(Callback):
    """Keeps each step's mean root reward."""

    def __init__(self) -> None:
        self.rewards: list[float] = []

    def on_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        self.rewards.append(metrics["rollout/reward_mean"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared: dict[str, Any] = dict(
        env_id="Arithmetic-v0", model=TESTBED, device="cpu", seed=args.seed, prompts_per_step=8, group_size=8,
        max_new_tokens=TESTBED_MAX_NEW_TOKENS, learning_rate=1e-4, total_steps=args.steps, train_problems=256,
        micro_batch_size=64, eval_every=0, save_every=0, tensorboard=False, progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "GRPO": (GRPOTrainer, GRPOConfig(**shared, output_dir=f"{tmp}/grpo")),
            "DEEP-GRPO": (DeepGRPOTrainer, DeepGRPOConfig(**shared, segment="line", output_dir=f"{tmp}/deep")),
        }
        for name, (trainer_cls, config) in runs.items():
            recorder = Rewards()
            trainer = trainer_cls(config, make_env=make_env, callbacks=[recorder])
            rollouts = trainer.collect()  # a look at what the trainer sees (counted in its budget)
            rewards = np.concatenate([b.rewards for b in rollouts.roots])
            print(f"{name}: first rollouts' rewards {sorted(set(rewards.tolist()))} "
                  f"(0.5 = off-by-one credit from the wrapper; {np.mean(rewards == 0.5):.0%} of rows)")
            trainer.train()
            r = recorder.rewards
            k = max(len(r) // 4, 1)
            print(f"{name}: mean reward of the first {k} steps {np.mean(r[:k]):.3f} -> last {k} {np.mean(r[-k:]):.3f} "
                  f"({len(r)} steps, {trainer.budget.generated_tokens} generated tokens)")


if __name__ == "__main__":
    main()
