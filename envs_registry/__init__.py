"""Gymnasium registrations of every deepgrpo environment id (importing this module registers them).

``gym.make("envs_registry:MathReasoning-v0")`` works with no prior import. Entry points are strings,
so registering imports nothing heavy.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import register, registry

_ENV = "deepgrpo_env.env:ReasoningEnv"
_VEC = "deepgrpo_env.vector:ReasoningVectorEnv"


@dataclass(frozen=True)
class EnvEntry:
    """One registered id: what it is, how it is built and how trainers use it.

    Attributes:
        id: The Gymnasium id.
        description: One line for ``deepgrpo envs``.
        kwargs: Default make-kwargs.
        entry_point: The single env class.
        vector_entry_point: The native vector env class.
        eval_id: The id of the held-out split trainers evaluate on by default; None = the last
            ``eval_problems`` problems of this id (held out of training).
        takes_tokenizer: Whether the env tokenizes with the policy's tokenizer (``tokenizer=``);
            False for envs with their own codec (Arithmetic-v0's characters).
    """

    id: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    entry_point: str = _ENV
    vector_entry_point: str = _VEC
    eval_id: str | None = None
    takes_tokenizer: bool = True


ENTRIES: tuple[EnvEntry, ...] = (
    EnvEntry("MathReasoning-v0", "GSM8K train (7,473 grade-school word problems), numeric grading",
             {"problems": "gsm8k:train"}, eval_id="MathReasoning-GSM8K-test-v0"),
    EnvEntry("MathReasoning-GSM8K-test-v0", "GSM8K test (1,319 problems), numeric grading",
             {"problems": "gsm8k:test"}),
    EnvEntry("MathReasoning-MATH-v0", "MATH test (5,000 competition problems), math-verify grading",
             {"problems": "math:test", "max_prompt_tokens": 1024, "max_response_tokens": 1024}),
    EnvEntry("MathReasoning-MATH500-v0", "MATH500 (500-problem MATH subset), math-verify grading",
             {"problems": "math500:test", "max_prompt_tokens": 1024, "max_response_tokens": 1024}),
    EnvEntry("MathReasoning-AIME24-v0", "AIME 2024 (30 problems, integer answers), math-verify grading",
             {"problems": "aime24:test", "max_prompt_tokens": 1024, "max_response_tokens": 1024}),
    EnvEntry("MathReasoning-AMC23-v0", "AMC 2023 (40 problems), math-verify grading",
             {"problems": "amc23:test", "max_prompt_tokens": 1024, "max_response_tokens": 1024}),
    EnvEntry("MathReasoning-SVAMP-v0", "SVAMP (1,000 one-step word problems), numeric grading",
             {"problems": "svamp:test"}),
    EnvEntry("MathReasoning-MAWPS-v0", "MAWPS (2,065 arithmetic word problems), numeric grading",
             {"problems": "mawps:test"}),
    EnvEntry("MathReasoning-MAWPS-SingleOp-v0",
             "MAWPS singleop (562 one-operation word problems; the main job's task), numeric grading",
             {"problems": "mawps:test:singleop"}),
    EnvEntry("Arithmetic-v0", "Procedural multi-step arithmetic, character tokenizer (fast CPU testbed)",
             {}, "deepgrpo_env.arithmetic:ArithmeticEnv", "deepgrpo_env.arithmetic:ArithmeticVectorEnv",
             takes_tokenizer=False),
)


def _register_all() -> None:
    for entry in ENTRIES:
        if entry.id in registry:
            continue
        register(
            id=entry.id,
            entry_point=entry.entry_point,
            vector_entry_point=entry.vector_entry_point,
            kwargs=dict(entry.kwargs),
            # Our envs enforce reset-before-step themselves and pass Gymnasium's checker in tests;
            # without these two wrappers `gym.make(...)` returns an object with snapshot()/reset_to().
            order_enforce=False,
            disable_env_checker=True,
        )


def list_envs() -> dict[str, str]:
    """Every deepgrpo env id with a one-line description."""
    return {entry.id: entry.description for entry in ENTRIES}


def suggest(env_id: str, n: int = 3) -> list[str]:
    """Registered deepgrpo ids closest to ``env_id`` (case-insensitive)."""
    ids = [entry.id for entry in ENTRIES]
    lowered = {i.lower(): i for i in ids}
    close = difflib.get_close_matches(env_id.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[c] for c in close]


def entry(env_id: str) -> EnvEntry | None:
    """The deepgrpo entry of ``env_id`` (``"envs_registry:"`` prefix allowed); None for other ids."""
    bare = env_id.split(":", 1)[-1]
    return next((e for e in ENTRIES if e.id == bare), None)


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` with a "did you mean" error for unknown deepgrpo ids."""
    check_id(env_id)
    return gym.make(env_id, **kwargs)


def check_id(env_id: str) -> None:
    """Raises a ValueError naming close matches when ``env_id`` is not registered."""
    bare = env_id.split(":", 1)[-1]
    if bare in registry:
        return
    close = suggest(bare)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"Unknown environment id {env_id!r}.{hint} "
        "See envs_registry.list_envs() for every deepgrpo id."
    )


_register_all()

__all__ = ["ENTRIES", "EnvEntry", "check_id", "entry", "list_envs", "make", "suggest"]
