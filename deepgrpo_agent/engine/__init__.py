"""Generation engines behind a token-id protocol, and :func:`make_engine`, the factory trainers use.

An engine is chosen by name (``GRPOConfig.engine``); :data:`ENGINES` maps each name to a builder
``(config, model, vocab_size) -> Engine``, imported lazily so that optional backends cost nothing
until used. A new backend adds one entry (see CONTRIBUTING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from deepgrpo_agent.engine.protocol import DecodeSession, Engine, SamplingParams

EngineBuilder = Callable[[Any, Any, int], Engine]
"""``(config, model, vocab_size) -> Engine``."""

ENGINES: dict[str, str] = {
    "hf": "deepgrpo_agent.engine:_hf_engine",
}
"""Engine name -> import path ``module:function`` of its builder."""


def _hf_engine(config: Any, model: Any, vocab_size: int) -> Engine:
    from deepgrpo_agent.engine.hf import HFEngine

    return HFEngine(model, vocab_size=vocab_size)


def make_engine(config: Any, model: Any, *, vocab_size: int) -> Engine:
    """The engine named by ``config.engine``, generating with ``model`` over ``vocab_size`` tokens.

    Args:
        config: A run config (:class:`~deepgrpo_agent.config.GRPOConfig` or a subclass).
        model: The policy being trained (the engine decodes with it and follows ``sync_weights``).
        vocab_size: Size of the env's action space (logits beyond it are never sampled).

    Raises:
        ValueError: If ``config.engine`` is not in :data:`ENGINES`.
    """
    name = getattr(config, "engine", "hf")
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}; expected one of {sorted(ENGINES)} (GRPOConfig.engine).")
    module, attr = ENGINES[name].split(":")
    builder: EngineBuilder = getattr(importlib.import_module(module), attr)
    return builder(config, model, vocab_size)


__all__ = ["ENGINES", "DecodeSession", "Engine", "EngineBuilder", "SamplingParams", "make_engine"]
