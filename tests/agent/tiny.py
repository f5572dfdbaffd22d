"""Tiny random-init models and configs for fast agent tests."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.helpers import TINY_PROBLEMS, TinyCodec


def tiny_model(
    vocab_size: int, seed: int = 0, hidden: int = 32, layers: int = 2, **config: Any
) -> LlamaForCausalLM:
    """A random-init Llama (4 heads, 2 KV heads); ``config`` overrides LlamaConfig fields."""
    torch.manual_seed(seed)
    fields: dict[str, Any] = dict(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    fields.update(config)
    return LlamaForCausalLM(LlamaConfig(**fields)).float()


def odd_length(response: str, reference: str) -> float:
    """A reward with variance under a random policy (module-level so it pickles)."""
    return float(len(response) % 2)


def tiny_config(tmp_path: Any, **overrides: Any) -> Any:
    from deepgrpo_agent.config import GRPOConfig

    fields: dict[str, Any] = dict(
        env_id="MathReasoning-v0",
        env_kwargs={"problems": TINY_PROBLEMS, "tokenizer": TinyCodec(), "prompt": "plain",
                    "verifier": odd_length, "max_prompt_tokens": 32},
        model="unused", device="cpu", seed=0, prompts_per_step=2, group_size=4, max_new_tokens=8,
        total_steps=1, learning_rate=1e-2, eval_every=0, save_every=0, eval_problems=4, pass_k=0,
        tensorboard=False, progress=False, output_dir=str(tmp_path / "run"), micro_batch_size=8,
    )
    fields.update(overrides)
    return GRPOConfig(**fields)


def always_one(response: str, reference: str) -> float:
    """Every group has zero variance under this reward."""
    return 1.0
