"""The arithmetic testbed policy that ships with the package: its name, where it lives, how to load it.

A 643k-parameter Llama taught Arithmetic-v0 (level 3, operands 0-9) by supervised learning on
solutions with recoverable mid-solution slips, so that exploration strategies differ measurably on
a CPU (see docs/testbed.md for the design and the measured numbers). Use it with
``GRPOConfig(model=TESTBED, env_id="Arithmetic-v0", env_kwargs=TESTBED_ENV_KWARGS,
max_new_tokens=TESTBED_MAX_NEW_TOKENS)``.

This module only loads the shipped weights and checks that an env speaks their vocabulary; the
corpus generator, the supervised training loop and the analyses that produced them are in
``scripts/testbed_sft.py`` (``python scripts/train_testbed.py`` retrains and rewrites the weights
and their ``recipe.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from deepgrpo_env.arithmetic import CharCodec, default_limits

TESTBED = "arithmetic-testbed"
"""``model`` value that loads the shipped testbed policy (``GRPOConfig(model=TESTBED)``)."""

TESTBED_DIR = Path(__file__).resolve().parent / "testbed_model"
"""Where the shipped weights live: ``config.json``, ``model.safetensors`` (fp16) and ``recipe.json``."""

TESTBED_ENV_KWARGS: dict[str, Any] = {"level": 3, "max_operand": 9}
"""Arithmetic-v0 arguments the testbed was trained for; pass them as ``env_kwargs``."""

TESTBED_MAX_NEW_TOKENS = default_limits(3, 9)[1]
"""Response budget that fits the testbed level (Arithmetic-v0's default for level 3: 80 tokens)."""


DEEP_TESTBED = "deep-testbed"
"""``model`` value that loads the deep testbed policy: Arithmetic-v0 level 5, one hard step (docs/pivot_utility.md)."""

DEEP_TESTBED_DIR = Path(__file__).resolve().parent / "deep_testbed_model"
"""Where the deep testbed's weights live (``scripts/train_deep_testbed.py`` writes them)."""

DEEP_TESTBED_ENV_KWARGS: dict[str, Any] = {"level": 5, "max_operand": 9}
"""Arithmetic-v0 arguments the deep testbed was trained for."""

DEEP_TESTBED_MAX_NEW_TOKENS = default_limits(5, 9)[1]
"""Response budget of the deep testbed's level (112 tokens)."""


def load_testbed(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> Any:
    """The shipped testbed policy (or the one saved at ``path``) in float32, in eval mode, on ``device``.

    Loads offline from the package. The fp16 weights are widened to float32: at this size bf16 or
    fp16 would save nothing and would perturb the 25-way softmax the RL methods sample from.

    Raises:
        FileNotFoundError: If the weights are missing (e.g. a source checkout without them).
        ValueError: If the checkpoint's vocabulary is not Arithmetic-v0's CharCodec.
    """
    from transformers import LlamaForCausalLM

    where = Path(path) if path is not None else TESTBED_DIR
    if not (where / "config.json").is_file() or not (where / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"Expected the testbed weights (config.json, model.safetensors) in {where}; retrain them with "
            "`python scripts/train_testbed.py` (the deep testbed: `python scripts/train_deep_testbed.py`), or "
            "reinstall deepgrpo (they ship as package data)."
        )
    model: Any = LlamaForCausalLM.from_pretrained(where, dtype=torch.float32, local_files_only=True)
    check_vocab(int(model.config.vocab_size), what=f"the checkpoint in {where}")
    return model.to(device).eval()


def check_vocab(vocab_size: int, what: str = "the env") -> None:
    """Raises unless ``vocab_size`` is CharCodec's: the testbed speaks only Arithmetic-v0's characters.

    Raises:
        ValueError: If ``vocab_size`` differs from ``CharCodec().vocab_size``.
    """
    expected = CharCodec().vocab_size
    if vocab_size != expected:
        raise ValueError(
            f"The {TESTBED!r} policy has Arithmetic-v0's {expected}-token CharCodec vocabulary, but {what} has "
            f"{vocab_size} tokens; train it on env_id='Arithmetic-v0' (env_kwargs={TESTBED_ENV_KWARGS}), "
            "or pick another `model` for this env."
        )


def shipped_recipe() -> dict[str, Any]:
    """The shipped ``recipe.json``: recipe, codec fingerprint and the measured numbers."""
    return dict(json.loads((TESTBED_DIR / "recipe.json").read_text()))


__all__ = [
    "DEEP_TESTBED",
    "DEEP_TESTBED_DIR",
    "DEEP_TESTBED_ENV_KWARGS",
    "DEEP_TESTBED_MAX_NEW_TOKENS",
    "TESTBED",
    "TESTBED_DIR",
    "TESTBED_ENV_KWARGS",
    "TESTBED_MAX_NEW_TOKENS",
    "check_vocab",
    "load_testbed",
    "shipped_recipe",
]
