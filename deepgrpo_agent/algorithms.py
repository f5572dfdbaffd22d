"""The algorithm table: an ``--algo`` name -> its config dataclass and trainer class (imported lazily)."""

from __future__ import annotations

import importlib
from typing import Any

ALGORITHMS: dict[str, tuple[str, str]] = {
    "grpo": ("deepgrpo_agent.config:GRPOConfig", "deepgrpo_agent.trainer:GRPOTrainer"),
    "deep-grpo": ("deepgrpo_agent.deep_grpo:DeepGRPOConfig", "deepgrpo_agent.deep_grpo:DeepGRPOTrainer"),
    "erpo": ("deepgrpo_agent.erpo:ERPOConfig", "deepgrpo_agent.erpo:ERPOTrainer"),
    "deep-erpo": ("deepgrpo_agent.erpo:DeepERPOConfig", "deepgrpo_agent.erpo:DeepERPOTrainer"),
    "treerl": ("deepgrpo_agent.tree:TreeConfig", "deepgrpo_agent.tree:TreeRLTrainer"),
    "uniform-tree": ("deepgrpo_agent.tree:UniformTreeConfig", "deepgrpo_agent.tree:UniformTreeTrainer"),
    "attnrl": ("deepgrpo_agent.attnrl:AttnRLConfig", "deepgrpo_agent.attnrl:AttnRLTrainer"),
}
"""Every trainer the CLI and the comparison runner can build, by name."""


def _load(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def get_algorithm(name: str) -> tuple[type, type]:
    """``(config class, trainer class)`` of algorithm ``name``.

    Raises:
        ValueError: If ``name`` is not in :data:`ALGORITHMS`.
    """
    if name not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {name!r}; expected one of {sorted(ALGORITHMS)}.")
    config_path, trainer_path = ALGORITHMS[name]
    return _load(config_path), _load(trainer_path)


__all__ = ["ALGORITHMS", "get_algorithm"]
