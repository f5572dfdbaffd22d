"""A user's reward wrapper reaches training: the rewards GRPO and DEEP-GRPO train on are the wrapper's."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from deepgrpo_agent import DeepGRPOConfig, DeepGRPOTrainer, GRPOTrainer
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_env.vector_wrappers import EpisodeRewardWrapper
from tests.agent.tiny import odd_length, tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size
CODEC = TinyCodec()


def mod3(response: str) -> float:
    """What the user's wrapper rewards: response lengths divisible by 3 (the env's verifier rewards odd ones)."""
    return float(len(response) % 3 == 0)


class LengthMod3Reward(EpisodeRewardWrapper):
    """A user-written verifier wrapper: grades every response with :func:`mod3` instead of the env."""

    def episode_rewards(self, rewards: Any, info: dict[str, Any], rows: Any) -> Any:
        scores = [mod3(str(info["response"][r])) for r in rows]
        self.set_scores(info, rows, scores)  # the env may have no verifier (scores nan = unscorable)
        rewards[rows] = scores
        return rewards


def wrapped_factory(config: GRPOConfig) -> Any:
    kwargs = {**config.env_kwargs, "max_response_tokens": config.max_new_tokens, "verifier": None}

    def make_env(num_envs: int) -> Any:
        venv = gym.make_vec(config.env_id, num_envs=num_envs, autoreset_mode="Disabled", copy=False, **kwargs)
        return LengthMod3Reward(venv)

    return make_env


def texts(batch: Any) -> list[str]:
    return [CODEC.decode(np.concatenate([p, n]).tolist()) for p, n in zip(batch.prefix_ids, batch.new_ids)]


def check_rewards_are_the_wrappers(batch: Any) -> None:
    responses = texts(batch)
    np.testing.assert_array_equal(batch.rewards, [mod3(t) for t in responses])
    # The env's own verifier would have scored these rows otherwise: the wrapper's reward is what counts.
    assert any(mod3(t) != odd_length(t, "") for t in responses)


def test_grpo_trains_on_a_user_wrapper_from_an_env_factory(tmp_path):
    config = tiny_config(tmp_path, prompts_per_step=3, group_size=4, max_new_tokens=8)
    trainer = GRPOTrainer(config, model=tiny_model(VOCAB), make_env=wrapped_factory(config))
    rollouts = trainer.collect()
    for batch in rollouts.roots:
        check_rewards_are_the_wrappers(batch)
        assert set(batch.grade_status) == {"ok"}  # graded by the wrapper: the env has no verifier
    samples, _ = trainer.compute_advantages(rollouts)
    rewards = rollouts.roots[0].rewards.reshape(3, 4)
    np.testing.assert_allclose(samples.advantages.reshape(3, 4), rewards - rewards.mean(axis=1, keepdims=True),
                               atol=1e-6)  # the trained advantages come from the wrapper's rewards
    metrics = trainer.train_step()
    assert np.isfinite(metrics["loss/total"]) and 0.0 <= metrics["rollout/reward_mean"] <= 1.0


def test_deep_grpo_branches_through_the_wrapper_named_in_the_config(tmp_path):
    base = tiny_config(tmp_path)
    config = DeepGRPOConfig(**{**base.__dict__, "env_kwargs": {**base.env_kwargs, "verifier": None}, "segment": "tokens", "segment_tokens": 2, "branches_per_pivot": 2,
                               "env_wrappers": ["tests.agent.test_reward_wrappers:LengthMod3Reward"]})
    trainer = DeepGRPOTrainer(config, model=tiny_model(VOCAB))
    assert isinstance(trainer.env, LengthMod3Reward)
    rollouts = trainer.collect()
    check_rewards_are_the_wrappers(rollouts.roots[0])
    assert rollouts.branches is not None and len(rollouts.branches) > 0  # pivots were restored through it
    assert isinstance(trainer.envs.branch_env(1), LengthMod3Reward)
    branch_texts = texts(rollouts.branches)
    np.testing.assert_array_equal(rollouts.branches.rewards, [mod3(t) for t in branch_texts])
    samples, metrics = trainer.compute_advantages(rollouts)
    assert metrics["adv/local_count"] >= 0 and np.isfinite(trainer.update(samples)["loss/total"])


def test_budget_mismatch_and_bad_factories_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"max_response_tokens=16.*`max_new_tokens`=8"):
        GRPOTrainer(tiny_config(tmp_path, env_kwargs={**tiny_config(tmp_path).env_kwargs,
                                                      "max_response_tokens": 16}), model=tiny_model(VOCAB))
    config = tiny_config(tmp_path)

    def next_step(num_envs: int) -> Any:
        return gym.make_vec(config.env_id, num_envs=num_envs, max_response_tokens=8, **config.env_kwargs)

    with pytest.raises(ValueError, match="autoreset_mode='Disabled'"):
        GRPOTrainer(config, model=tiny_model(VOCAB), make_env=next_step)
    with pytest.raises(ValueError, match="Cannot import env wrapper"):
        GRPOTrainer(tiny_config(tmp_path, env_wrappers=["tests.nowhere:Wrapper"]), model=tiny_model(VOCAB))
