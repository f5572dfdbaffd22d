"""Generation engines behind a token-id protocol, and :func:`make_engine`, the factory trainers use.

An engine is chosen by name (``GRPOConfig.engine``); :data:`ENGINES` maps each name to a builder
``(config, model, vocab_size, dtype) -> Engine``, imported lazily so that optional backends cost nothing
until used. A new backend adds one entry (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from deepgrpo_agent.engine.protocol import DecodeSession, Engine, SamplingParams

EngineBuilder = Callable[[Any, Any, int, "torch.dtype | None"], Engine]
"""``(config, model, vocab_size, dtype) -> Engine``; ``dtype`` is the compute dtype to generate in."""

ENGINES: dict[str, str] = {
    "hf": "deepgrpo_agent.engine:_hf_engine",
}
"""Engine name -> import path ``module:function`` of its builder."""


def _hf_engine(config: Any, model: Any, vocab_size: int, dtype: torch.dtype | None) -> Engine:
    from deepgrpo_agent.engine.hf import HFEngine

    return HFEngine(model, vocab_size=vocab_size, dtype=dtype)


def make_engine(config: Any, model: Any, *, vocab_size: int, dtype: torch.dtype | None = None) -> Engine:
    """The engine named by ``config.engine``, generating with ``model`` over ``vocab_size`` tokens.

    Args:
        config: A run config (:class:`~deepgrpo_agent.config.GRPOConfig` or a subclass).
        model: The policy being trained (the engine decodes with it and follows ``sync_weights``).
        vocab_size: Size of the env's action space (logits beyond it are never sampled).
        dtype: Compute dtype to generate in (the run's :class:`~deepgrpo_agent.precision.Precision`);
            None = the model's own dtype.

    Raises:
        ValueError: If ``config.engine`` is not in :data:`ENGINES`.
    """
    name = getattr(config, "engine", "hf")
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}; expected one of {sorted(ENGINES)} (GRPOConfig.engine).")
    module, attr = ENGINES[name].split(":")
    builder: EngineBuilder = getattr(importlib.import_module(module), attr)
    return builder(config, model, vocab_size, dtype)


__all__ = ["ENGINES", "DecodeSession", "Engine", "EngineBuilder", "SamplingParams", "make_engine"]
