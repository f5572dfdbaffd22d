"""Snapshot/restore through wrapper stacks, and composable reward wrappers.

Gymnasium 1.x wrappers do not forward unknown attributes, so ``env.snapshot()`` only exists on
deepgrpo's own envs and wrappers. Through *any* wrapper stack use the functions here::

    state = deepgrpo_env.snapshot(env)          # finds the env (or wrapper) that can snapshot
    obs, info = deepgrpo_env.reset_to(env, state)

``reset_to`` restores the innermost state and then brings every wrapper above it up to date: it
re-applies observation wrappers to the observation, and it sets the per-episode counters of the
stateful Gymnasium wrappers it knows (``OrderEnforcing``, ``TimeLimit``,
``RecordEpisodeStatistics``). For a third-party stateful wrapper, either give it ``reset_to(state)``
/ ``snapshot()`` methods, or register a hook with :func:`register_restore_hook`.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from deepgrpo_env.grading import Grader, is_correct
from deepgrpo_env.state import EnvState
from deepgrpo_env.verifiers import Verifier

RestoreHook = Callable[[gym.Wrapper, EnvState], None]
_HOOKS: dict[type, RestoreHook] = {}
_WARNED: set[type] = set()


def register_restore_hook(wrapper_type: type, hook: RestoreHook) -> None:
    """Tells :func:`reset_to` how to bring a stateful wrapper type up to date after a restore."""
    _HOOKS[wrapper_type] = hook


def _order_enforcing(w: Any, state: EnvState) -> None:
    w._has_reset = True


def _time_limit(w: Any, state: EnvState) -> None:
    w._elapsed_steps = state.steps


def _episode_statistics(w: Any, state: EnvState) -> None:
    # Returns before the restore point are not known to the state; the statistics restart there.
    w.episode_returns = 0.0
    w.episode_lengths = state.steps
    w.episode_start_time = time.perf_counter()


register_restore_hook(gym.wrappers.OrderEnforcing, _order_enforcing)
register_restore_hook(gym.wrappers.TimeLimit, _time_limit)
register_restore_hook(gym.wrappers.RecordEpisodeStatistics, _episode_statistics)
register_restore_hook(gym.wrappers.PassiveEnvChecker, lambda w, s: None)


def _chain(env: gym.Env) -> list[gym.Env]:
    """The wrapper stack from the outermost wrapper down to the base env."""
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _own(layer: gym.Env, name: str) -> bool:
    """Whether ``layer``'s class (not Gymnasium's base classes) defines ``name``."""
    return any(
        name in klass.__dict__
        for klass in type(layer).__mro__
        if klass is not object and klass.__module__ != "gymnasium.core"
    )


def snapshot(env: gym.Env) -> EnvState:
    """The :class:`EnvState` of ``env``, through any stack of wrappers.

    Raises:
        TypeError: If no layer of ``env`` can snapshot.
    """
    for layer in _chain(env):
        if _own(layer, "snapshot"):
            return layer.snapshot()  # type: ignore[attr-defined, no-any-return]
    raise TypeError(f"No layer of {env} has snapshot(); expected a deepgrpo environment underneath.")


def reset_to(env: gym.Env, state: EnvState) -> tuple[Any, dict[str, Any]]:
    """Restores ``state`` into ``env`` through any stack of wrappers (see the module docstring)."""
    layers = _chain(env)
    owner = next((k for k, layer in enumerate(layers) if _own(layer, "reset_to")), None)
    if owner is None:
        raise TypeError(f"No layer of {env} has reset_to(); expected a deepgrpo environment underneath.")
    obs, info = layers[owner].reset_to(state)  # type: ignore[attr-defined]
    for above in reversed(layers[:owner]):
        _sync(above, state)
        if isinstance(above, gym.ObservationWrapper):
            obs = above.observation(obs)
    return obs, info


def _sync(layer: gym.Env, state: EnvState) -> None:
    for klass in type(layer).__mro__:
        hook = _HOOKS.get(klass)
        if hook is not None:
            hook(layer, state)  # type: ignore[arg-type]
            return
    if _own(layer, "reset") and type(layer) not in _WARNED:
        _WARNED.add(type(layer))
        warnings.warn(
            f"{type(layer).__name__} overrides reset(); deepgrpo cannot know its per-episode state after "
            "reset_to(). Give it reset_to()/snapshot() or call "
            "deepgrpo_env.register_restore_hook(YourWrapper, hook).",
            stacklevel=3,
        )


class StateForwardingWrapper(gym.Wrapper[Any, Any, Any, Any]):
    """Base for deepgrpo wrappers: ``snapshot()`` and ``reset_to()`` pass through to the env below."""

    def snapshot(self) -> EnvState:
        """The state of the wrapped env."""
        return snapshot(self.env)

    def reset_to(self, state: EnvState) -> tuple[Any, dict[str, Any]]:
        """Restores the wrapped env to ``state``."""
        return reset_to(self.env, state)


def _is_end(terminated: bool, truncated: bool, info: dict[str, Any]) -> bool:
    return (terminated or truncated) and "response" in info


class VerifierReward(StateForwardingWrapper):
    """Scores the final response with ``verifier`` and makes that score the episode's reward.

    The final ``info`` gets ``score``, ``correct`` and ``grade_status`` from this verifier (the
    previous values move to ``info["inner_score"]``). Grading runs in a worker process with a hard
    ``timeout`` unless the verifier is marked ``inline_safe``. To avoid grading twice, make the env
    with ``verifier=None`` (``gym.make(id, verifier=None)``).

    Args:
        env: The env to wrap (its final ``info`` must carry ``response`` and ``reference``).
        verifier: ``(response_text, reference) -> float | None``; None means unscorable.
        timeout: Hard grading timeout in seconds.
    """

    def __init__(self, env: gym.Env, verifier: Verifier, *, timeout: float = 5.0) -> None:
        super().__init__(env)
        if not callable(verifier):
            raise TypeError(
                f"Expected `verifier` callable (response, reference) -> float | None, got {type(verifier).__name__}."
            )
        self.verifier = verifier
        self.grader = Grader(verifier, timeout=timeout)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if _is_end(terminated, truncated, info):
            grade = self.grader.grade(info["response"], info["reference"])
            info = dict(info, inner_score=info.get("score"))
            info["score"] = grade.score
            info["correct"] = is_correct(grade.score)
            info["grade_status"] = grade.status
            reward = grade.score if grade.score is not None else 0.0
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        self.grader.close()
        super().close()


_BOXED = re.compile(r"\\boxed\s*\{")


class FormatReward(StateForwardingWrapper):
    """Adds ``bonus`` to the final reward when the response has the expected format.

    Args:
        env: The env to wrap.
        bonus: Added when the format is present (may be negative to penalize it instead).
        missing_penalty: Added when the format is absent (e.g. ``-0.1``).
        pattern: Regex the response must contain; default ``\\boxed{``.
    """

    def __init__(
        self,
        env: gym.Env,
        *,
        bonus: float = 0.1,
        missing_penalty: float = 0.0,
        pattern: str | re.Pattern[str] = _BOXED,
    ) -> None:
        super().__init__(env)
        self.bonus = float(bonus)
        self.missing_penalty = float(missing_penalty)
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if _is_end(terminated, truncated, info):
            ok = self.pattern.search(info["response"]) is not None
            info = dict(info, format_ok=ok)
            reward = float(reward) + (self.bonus if ok else self.missing_penalty)
        return obs, reward, terminated, truncated, info


class LengthPenalty(StateForwardingWrapper):
    """Subtracts ``coef`` per response token beyond ``free_tokens`` from the final reward.

    Args:
        env: The env to wrap.
        coef: Penalty per token over the free allowance.
        free_tokens: Tokens that cost nothing.
    """

    def __init__(self, env: gym.Env, *, coef: float = 1e-3, free_tokens: int = 0) -> None:
        super().__init__(env)
        if coef < 0 or free_tokens < 0:
            raise ValueError(f"Expected `coef` >= 0 and `free_tokens` >= 0, got {coef} and {free_tokens}.")
        self.coef = float(coef)
        self.free_tokens = int(free_tokens)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if _is_end(terminated, truncated, info):
            n = int(np.asarray(info["response_ids"]).shape[0])
            penalty = self.coef * max(0, n - self.free_tokens)
            info = dict(info, length_penalty=penalty)
            reward = float(reward) - penalty
        return obs, reward, terminated, truncated, info


class BudgetIsTerminal(StateForwardingWrapper):
    """Reports running out of response budget as ``terminated`` instead of ``truncated``.

    For classic RL libraries (Stable-Baselines3): they treat ``truncated`` as a time limit outside
    the task and bootstrap from the final observation's value. In a reasoning env the episode really
    is over when the budget runs out (the response has been graded and nothing can follow), and that
    bootstrapped value feeds on itself. LLM trainers in this library do not need this wrapper.
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated or truncated, False, info
