"""check_reasoning_env: Gymnasium's env checker followed by deepgrpo's own contract."""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from typing import Any, NoReturn

import gymnasium as gym
import numpy as np
from gymnasium.utils.env_checker import check_env as gym_check_env

from deepgrpo_env.state import EnvState
from deepgrpo_env.wrappers import reset_to, snapshot


class ContractError(AssertionError):
    """An environment broke deepgrpo's env contract."""


def _fail(message: str) -> NoReturn:
    raise ContractError(message)


def _non_stop_actions(env: gym.Env, rng: np.random.Generator, count: int) -> list[int]:
    base = env.unwrapped
    stops = set(base.codec.stop_token_ids)  # type: ignore[attr-defined]
    n = int(env.action_space.n)  # type: ignore[attr-defined]
    out: list[int] = []
    while len(out) < count:
        a = int(rng.integers(n))
        if a not in stops:
            out.append(a)
    return out


def _rollout(env: gym.Env, actions: list[int]) -> list[tuple[Any, ...]]:
    trace = []
    for a in actions:
        obs, reward, term, trunc, info = env.step(a)
        trace.append((obs["input_ids"].copy(), obs["length"].copy(), float(reward), term, trunc,
                      info.get("score"), info.get("response")))
        if term or trunc:
            break
    return trace


def check_reasoning_env(
    env: gym.Env,
    *,
    seed: int = 0,
    depth: int = 5,
    horizon: int = 8,
    make_fresh: Callable[[], gym.Env] | None = None,
) -> None:
    """Runs Gymnasium's checker, then the snapshot/restore contract, on ``env``.

    Checks: snapshot round trip (the same actions after a restore give identical observations,
    rewards, flags and final info), snapshots are immutable and unaffected by later steps, states
    pickle and restore into a freshly made env, the prompt decodes and re-encodes to itself, rewards
    lie in the reward range, a seeded reset is deterministic, and no global RNG is touched.

    Args:
        env: The env to check.
        seed: Seed of the resets and of the random actions.
        depth: Actions taken before the snapshot.
        horizon: Actions taken after it.
        make_fresh: Builds a second env of the same configuration, for the restore-into-a-fresh-env
            check; None = ``gym.make(env.spec)`` (the id *and* the make-kwargs), which needs an env
            made with ``gym.make``.

    Raises:
        ContractError: Describing the first broken rule, or when no fresh env can be made.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    gym_check_env(env.unwrapped, skip_render_check=True)
    rng = np.random.default_rng(seed)

    obs_a, info_a = env.reset(seed=seed)
    obs_b, info_b = env.reset(seed=seed)
    if info_a.get("problem_id") != info_b.get("problem_id") or not np.array_equal(
        obs_a["input_ids"], obs_b["input_ids"]
    ):
        _fail("reset(seed=s) twice gave different problems or observations.")

    base = env.unwrapped
    codec = base.codec  # type: ignore[attr-defined]
    question = str(info_b.get("question", ""))
    if codec.decode(codec.encode(question)) != question:
        _fail("The question text does not survive encode -> decode.")

    for a in _non_stop_actions(env, rng, depth):
        env.step(a)
    state = snapshot(env)
    frozen = (state.response_ids.copy(), state.depth)
    if state.response_ids.flags.writeable or state.prompt_ids.flags.writeable:
        _fail("Snapshot arrays must be read-only.")
    continuation = _non_stop_actions(env, rng, horizon) + [int(codec.stop_token_ids[0])]
    first = _rollout(env, continuation)
    if not np.array_equal(state.response_ids, frozen[0]) or state.depth != frozen[1]:
        _fail("Stepping the env changed an earlier snapshot.")
    reset_to(env, state)
    second = _rollout(env, continuation)
    if not _same(first, second):
        _fail("The same actions after reset_to(state) gave different step outputs.")

    clone: EnvState = pickle.loads(pickle.dumps(state))
    if clone != state:
        _fail("A state changed through pickling.")
    fresh = _fresh_env(env, make_fresh)
    if fresh.unwrapped.fingerprint != base.fingerprint:  # type: ignore[attr-defined]
        _fail(
            f"The fresh env has fingerprint {fresh.unwrapped.fingerprint!r}, the checked env "  # type: ignore[attr-defined]
            f"{base.fingerprint!r}: pass make_fresh= that builds the same configuration."  # type: ignore[attr-defined]
        )
    reset_to(fresh, clone)
    if not _same(first, _rollout(fresh, continuation)):
        _fail("Restoring a pickled state into a fresh env gave different step outputs.")
    fresh.close()

    for step in first[:-1]:
        if step[2] != 0.0:
            _fail(f"Expected reward 0 before the episode ends, got {step[2]}.")
    if not np.isfinite(first[-1][2]):
        _fail(f"Expected a finite final reward, got {first[-1][2]}.")
    if random.getstate() != py_state or not _same_np_state(np.random.get_state(), np_state):
        _fail("The env touched Python's or NumPy's global random state.")


def _fresh_env(env: gym.Env, make_fresh: Callable[[], gym.Env] | None) -> gym.Env:
    if make_fresh is not None:
        return make_fresh()
    if env.spec is None:
        _fail(
            "Cannot make a fresh env to restore a pickled state into: the env has no spec (it was not made "
            "with gym.make). Pass make_fresh=lambda: YourEnv(...same arguments...)."
        )
    return gym.make(env.spec)


def _same(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, np.ndarray):
                if not np.array_equal(u, v):
                    return False
            elif u != v:
                return False
    return True


def _same_np_state(a: Any, b: Any) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and tuple(a[2:]) == tuple(b[2:])
