"""Generation engines behind a token-id protocol, and :func:`make_engine`, the factory trainers use.

An engine is chosen by name (``GRPOConfig.engine``); :data:`ENGINES` maps each name to a builder
``(config, model, *, vocab_size, dtype, max_model_len) -> Engine``, imported lazily so that optional
backends (vLLM) cost nothing until used. A new backend adds one entry (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol

from deepgrpo_agent.engine.protocol import Completion, DecodeSession, Engine, SamplingParams

if TYPE_CHECKING:
    import torch


class EngineBuilder(Protocol):
    """Builds an engine around ``model`` from a run ``config``."""

    def __call__(self, config: Any, model: Any, *, vocab_size: int, dtype: torch.dtype | None,
                 max_model_len: int | None) -> Engine: ...


ENGINES: dict[str, str] = {
    "hf": "deepgrpo_agent.engine:_hf_engine",
    "vllm": "deepgrpo_agent.engine:_vllm_engine",
}
"""Engine name -> import path ``module:function`` of its builder."""


def _hf_engine(config: Any, model: Any, *, vocab_size: int, dtype: torch.dtype | None,
               max_model_len: int | None) -> Engine:
    from deepgrpo_agent.engine.hf import HFEngine

    return HFEngine(model, vocab_size=vocab_size, dtype=dtype)


def _vllm_engine(config: Any, model: Any, *, vocab_size: int, dtype: torch.dtype | None,
                 max_model_len: int | None) -> Engine:
    from deepgrpo_agent.engine.vllm import VLLMEngine  # imports vllm, with an install hint when missing

    kv_gb = float(getattr(config, "vllm_kv_cache_gb", 2.0))
    return VLLMEngine(
        model,
        vocab_size=vocab_size,
        dtype=dtype,
        max_model_len=max_model_len,
        kv_cache_gb=kv_gb if kv_gb > 0 else None,
        gpu_memory_utilization=float(getattr(config, "vllm_gpu_memory_utilization", 0.3)),
        seed=int(getattr(config, "seed", 0)),
    )


def engine_max_len(config: Any, max_prompt_tokens: int, model: Any) -> int:
    """Longest prompt + response any rollout or evaluation of ``config`` asks of an engine: the env's
    longest prompt plus the larger response budget, and at least the model's trained positions."""
    response = max(int(config.max_new_tokens), int(getattr(config, "eval_max_new_tokens", 0) or 0))
    positions = int(getattr(getattr(model, "config", None), "max_position_embeddings", 0) or 0)
    return max(int(max_prompt_tokens) + response, positions)


def make_engine(config: Any, model: Any, *, vocab_size: int, dtype: torch.dtype | None = None,
                max_model_len: int | None = None) -> Engine:
    """The engine named by ``config.engine``, generating with ``model`` over ``vocab_size`` tokens.

    Args:
        config: A run config (:class:`~deepgrpo_agent.config.GRPOConfig` or a subclass); engine
            settings (``vllm_*`` fields, ``seed``) come from it.
        model: The policy being trained (the engine decodes with it, or a copy of its weights, and
            follows ``sync_weights``).
        vocab_size: Size of the env's action space (logits beyond it are never sampled).
        dtype: Compute dtype to generate in (the run's :class:`~deepgrpo_agent.precision.Precision`);
            None = the model's own dtype.
        max_model_len: Longest prompt + response the engine must accept (:func:`engine_max_len`);
            None = the model's ``max_position_embeddings`` (engines that preallocate need it).

    Raises:
        ValueError: If ``config.engine`` is not in :data:`ENGINES`.
        ImportError: If the engine's backend is not installed (with the command that installs it).
    """
    name = getattr(config, "engine", "hf")
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}; expected one of {sorted(ENGINES)} (GRPOConfig.engine).")
    module, attr = ENGINES[name].split(":")
    builder: EngineBuilder = getattr(importlib.import_module(module), attr)
    return builder(config, model, vocab_size=vocab_size, dtype=dtype, max_model_len=max_model_len)


__all__ = ["ENGINES", "Completion", "DecodeSession", "Engine", "EngineBuilder", "SamplingParams",
           "engine_max_len", "make_engine"]
