"""Fault tier: tampered states and fuzzed actions (hypothesis). A state is either refused with a clear
ValueError/TypeError that leaves the env as it was, or restored into an env that then steps normally;
an action is either a valid token id or refused. Nothing else ever escapes."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepgrpo_env import ReasoningEnv
from deepgrpo_env.state import EnvState
from deepgrpo_env.vector import ReasoningVectorEnv
from tests.helpers import TINY_PROBLEMS, TinyCodec

pytestmark = pytest.mark.fault

KW: dict[str, Any] = dict(problems=TINY_PROBLEMS, verifier="numeric", prompt="plain",
                          max_prompt_tokens=32, max_response_tokens=12)
VOCAB = TinyCodec().vocab_size
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ints = st.one_of(st.integers(-5, 60), st.integers(), st.sampled_from([0, 1, 11, 12, 13, 19, 20, 45, 46]))
id_arrays = st.one_of(
    st.lists(ints, max_size=16).map(lambda x: np.array(x, dtype=object).astype(np.int64)
                                    if all(abs(v) < 2**62 for v in x) else np.array([], dtype=np.int64)),
    st.lists(st.floats(allow_nan=True), max_size=4).map(np.array),
    st.lists(st.integers(2, 45), min_size=1, max_size=6).map(lambda x: np.array([x, x], dtype=np.int64)),
    st.lists(st.booleans(), max_size=4).map(np.array),
    st.just([5, 6]),
    st.none(),
)
junk = st.one_of(st.none(), st.booleans(), ints, st.floats(), st.text(max_size=5), st.binary(max_size=5),
                 st.lists(ints, max_size=3), st.dictionaries(st.text(max_size=3), ints, max_size=3))
rng_states = st.one_of(
    junk,
    st.fixed_dictionaries({"bit_generator": st.sampled_from(["PCG64", "MT19937", "SFC64", "Philox", "eval", ""]),
                           "state": st.one_of(junk, st.fixed_dictionaries({"state": ints, "inc": ints}))}),
)
FIELDS = {
    "problem_index": st.one_of(ints, junk),
    "prompt_ids": id_arrays,
    "response_ids": id_arrays,
    "terminated": st.one_of(st.booleans(), junk),
    "truncated": st.one_of(st.booleans(), junk),
    "rng_state": rng_states,
    "fingerprint": st.one_of(st.text(max_size=10), junk),
}
tampering = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), min_size=1, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
)


def make_env() -> ReasoningEnv:
    return ReasoningEnv(tokenizer=TinyCodec(), **KW)


@pytest.fixture(scope="module")
def env_and_state() -> tuple[ReasoningEnv, EnvState]:
    env = make_env()
    env.reset(options={"problem_index": 3})
    for a in (5, 6, 7):
        env.step(a)
    return env, env.snapshot()


@SETTINGS
@given(change=tampering)
def test_tampered_states_are_refused_cleanly_or_restore_a_working_env(
    env_and_state: tuple[ReasoningEnv, EnvState], change: dict[str, Any]
) -> None:
    env, good = env_and_state
    env.reset_to(good)
    tampered = dataclasses.replace(good, **change)
    before = env.snapshot()
    try:
        env.reset_to(tampered)
    except (ValueError, TypeError) as e:
        assert str(e) and "\n" not in str(e)
        assert env.snapshot() == before  # a refused state changes nothing
        return
    # Accepted: the env holds a consistent episode that steps to its end like any other.
    state = env.snapshot()
    assert 0 <= state.problem_index < len(TINY_PROBLEMS) and state.depth <= 12
    if not state.done:
        for _ in range(12 - state.depth):
            *_, term, trunc, info = env.step(5)
            if term or trunc:
                assert info["grade_status"] in ("ok", "unscorable")
                break
        assert env.snapshot().done


@SETTINGS
@given(actions=st.lists(st.one_of(ints, junk, st.floats(), st.just(np.float32(3)), st.just(np.array([1]))), max_size=20))
def test_fuzzed_actions_are_token_ids_or_refused(actions: list[Any]) -> None:
    env = make_env()
    env.reset(options={"problem_index": 0})
    for a in actions:
        depth = env.snapshot().depth
        valid = isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_)) and 0 <= a < VOCAB
        if env.snapshot().done:
            with pytest.raises(RuntimeError):
                env.step(a)
            continue
        if valid:
            env.step(a)
            assert env.snapshot().depth == depth + 1
        else:
            with pytest.raises(ValueError):
                env.step(a)
            assert env.snapshot().depth == depth


@SETTINGS
@given(
    indices=st.lists(st.one_of(ints, junk), max_size=4),
    bad_at=st.integers(0, 3),
    change=tampering,
)
def test_vector_reset_to_is_all_or_nothing(indices: list[Any], bad_at: int, change: dict[str, Any]) -> None:
    venv = ReasoningVectorEnv(4, tokenizer=TinyCodec(), **KW)
    venv.reset(seed=1)
    venv.step(np.full(4, 5))
    states = venv.snapshot()
    states[bad_at] = dataclasses.replace(states[bad_at], **change)
    before = venv.snapshot()
    rows = indices or None
    try:
        venv.reset_to(states[: len(indices)] if indices else states, rows)
    except (ValueError, TypeError, IndexError):
        assert venv.snapshot() == before
