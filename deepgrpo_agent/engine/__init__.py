"""Generation engines behind a token-id protocol, and the factory that builds one by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from deepgrpo_agent.engine.protocol import Completion, DecodeSession, Engine, SamplingParams

__all__ = ["ENGINES", "Completion", "DecodeSession", "Engine", "SamplingParams", "make_engine"]

EngineFactory = Callable[..., Engine]
"""``factory(model, *, vocab_size, max_model_len, config) -> Engine``."""


def _hf(model: Any, *, vocab_size: int, max_model_len: int, config: Any = None) -> Engine:
    from deepgrpo_agent.engine.hf import HFEngine

    return HFEngine(model, vocab_size=vocab_size)


def _vllm(model: Any, *, vocab_size: int, max_model_len: int, config: Any = None) -> Engine:
    from deepgrpo_agent.engine.vllm import VLLMEngine  # imports vllm, with an install hint when missing

    kv_gb = float(getattr(config, "vllm_kv_cache_gb", 2.0))
    return VLLMEngine(
        model,
        vocab_size=vocab_size,
        max_model_len=max_model_len,
        kv_cache_gb=kv_gb if kv_gb > 0 else None,
        gpu_memory_utilization=float(getattr(config, "vllm_gpu_memory_utilization", 0.3)),
        seed=int(getattr(config, "seed", 0)),
    )


ENGINES: dict[str, EngineFactory] = {"hf": _hf, "vllm": _vllm}
"""Engine factories by the name of ``GRPOConfig.engine``."""


def make_engine(name: str, model: Any, *, vocab_size: int, max_model_len: int, config: Any = None) -> Engine:
    """Builds the engine ``name`` (a key of :data:`ENGINES`) around ``model``.

    Args:
        name: ``"hf"`` or ``"vllm"``.
        model: The policy (a transformers causal LM); the HF engine generates with it directly, vLLM
            with a copy of its weights that :meth:`Engine.sync_weights` refreshes.
        vocab_size: The env's action-space size: only ids below it are sampled.
        max_model_len: Longest prompt + response any rollout or evaluation asks for.
        config: The run's config, for engine settings (``vllm_*`` fields, ``seed``).
    """
    factory = ENGINES.get(name)
    if factory is None:
        raise ValueError(f"Expected `engine` in {sorted(ENGINES)}, got {name!r}.")
    return factory(model, vocab_size=vocab_size, max_model_len=max_model_len, config=config)
