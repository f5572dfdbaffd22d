"""Stable-Baselines3 interop: PPO on deepgrpo's token envs (``Arithmetic-v0`` and friends).

The envs' observations are dicts whose ``input_ids`` are token ids. :class:`TokenEmbedding` embeds
them (a ``MultiInputPolicy`` would otherwise feed the ids to its MLP as floats, where ``7`` sits
between ``6`` and ``8`` for no reason), and :func:`token_ppo` is the PPO the examples use: one
token per timestep, undiscounted Monte-Carlo returns (gamma = lambda = 1, the reward comes at the end).

Stable-Baselines3 is an optional extra (``pip install 'deepgrpo[sb3]'``); importing this module
without it raises an ImportError that says so.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

try:
    from stable_baselines3 import PPO
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
except ImportError as e:  # an optional extra: nothing else in the library imports this module
    raise ImportError(
        "deepgrpo_agent.sb3 needs Stable-Baselines3, an optional extra: pip install 'deepgrpo[sb3]' "
        "(or pip install 'stable-baselines3>=2.3')."
    ) from e


class TokenEmbedding(BaseFeaturesExtractor):
    """Embeds every token id of ``input_ids`` and concatenates them, position by position."""

    def __init__(self, observation_space: gym.spaces.Dict, dim: int = 16) -> None:
        ids_space = observation_space["input_ids"]
        if not isinstance(ids_space, gym.spaces.Box):
            raise TypeError(f"Expected observation_space['input_ids'] to be a Box of token ids, got {ids_space}.")
        width, vocab = ids_space.shape[0], int(ids_space.high.max()) + 1
        super().__init__(observation_space, features_dim=width * dim)
        self.embed = nn.Embedding(vocab, dim)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        out: torch.Tensor = self.embed(obs["input_ids"].long()).flatten(1)  # (B, W * dim)
        return out


def token_ppo(vec_env: Any, *, learning_rate: float = 1e-3, ent_coef: float = 0.01, seed: int = 0) -> PPO:
    """PPO with :class:`TokenEmbedding` and a 128x128 MLP; 64 steps x n_envs per rollout, 4 epochs."""
    return PPO(
        "MultiInputPolicy",
        vec_env,
        n_steps=64,
        batch_size=256,
        n_epochs=4,
        gamma=1.0,
        gae_lambda=1.0,
        learning_rate=learning_rate,
        ent_coef=ent_coef,
        policy_kwargs={"features_extractor_class": TokenEmbedding, "net_arch": [128, 128]},
        seed=seed,
        verbose=0,
    )


__all__ = ["TokenEmbedding", "token_ppo"]
