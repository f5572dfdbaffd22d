"""Contract tests of the single env: snapshot/restore exactness, determinism, errors."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepgrpo_env import EnvState, ReasoningEnv
from deepgrpo_env.checker import ContractError, check_reasoning_env
from tests.helpers import TINY_PROBLEMS, TinyCodec


def make_tiny(**kwargs) -> ReasoningEnv:
    defaults = dict(problems=TINY_PROBLEMS, tokenizer=TinyCodec(), verifier="numeric", prompt="plain",
                    max_prompt_tokens=32, max_response_tokens=12)
    defaults.update(kwargs)
    return ReasoningEnv(**defaults)


def run(env, actions):
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs["input_ids"].copy(), obs["length"].copy(), r, term, trunc,
                    info.get("score"), info.get("response"), info.get("grade_status")))
        if term or trunc:
            break
    return out


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            if isinstance(u, np.ndarray):
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v


def test_reset_info_and_problem_choice():
    env = make_tiny()
    obs, info = env.reset(options={"problem_index": 7})
    assert info["problem_id"] == "t-7" and info["reference"] == "15"
    assert info["question"] == "what is 7+8?"
    p = info["prompt_length"]
    assert obs["prompt_length"][0] == p and obs["length"][0] == p
    assert env.codec.decode(obs["input_ids"][:p].tolist()).startswith("what is 7+8?")
    assert (obs["input_ids"][p:] == env.codec.pad_token_id).all()
    assert env.observation_space.contains(obs)


def test_seeded_reset_is_deterministic_and_uses_env_rng():
    a, b = make_tiny(), make_tiny()
    ids_a = [a.reset(seed=s)[1]["problem_id"] for s in range(10)]
    ids_b = [b.reset(seed=s)[1]["problem_id"] for s in range(10)]
    assert ids_a == ids_b
    assert len(set(ids_a)) > 3  # different seeds draw different problems
    np_state = np.random.get_state()[1].copy()
    a.reset(seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)


def test_reward_only_at_end_with_grade_info(tiny_codec):
    env = make_tiny()
    env.reset(options={"problem_index": 2})  # 2+3 -> "5"
    rewards = []
    for ch in "it is 5.":
        _, r, term, trunc, info = env.step(tiny_codec.encode(ch)[0])
        rewards.append(r)
    assert rewards == [0.0] * len(rewards) and not term and not trunc
    _, r, term, trunc, info = env.step(1)
    assert term and not trunc and r == 1.0
    assert info["response"] == "it is 5." and info["correct"] is True and info["grade_status"] == "ok"
    assert info["problem_id"] == "t-2"
    np.testing.assert_array_equal(info["response_ids"][-1], 1)


def test_truncation_at_budget():
    env = make_tiny(max_response_tokens=4)
    env.reset(options={"problem_index": 0})
    flags = [env.step(5)[2:4] for _ in range(4)]
    assert flags[:3] == [(False, False)] * 3 and flags[3] == (False, True)


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.lists(st.integers(min_value=0, max_value=45), min_size=1, max_size=30),
    depth=st.integers(min_value=0, max_value=12),
    problem=st.integers(min_value=0, max_value=19),
)
def test_snapshot_restore_property(tokens, depth, problem):
    env = make_tiny()
    env.reset(options={"problem_index": problem})
    prefix, rest = tokens[:depth], tokens[depth:]
    done = False
    for a in prefix:
        *_, term, trunc, _ = env.step(a)
        if term or trunc:
            done = True
            break
    state = env.snapshot()
    before = (state.response_ids.copy(), state.depth, state.terminated, state.truncated)
    if done:
        with pytest.raises(RuntimeError):
            env.step(3)
        return
    first = run(env, rest)
    # no aliasing: stepping on did not change the snapshot
    np.testing.assert_array_equal(state.response_ids, before[0])
    assert (state.depth, state.terminated, state.truncated) == before[1:]
    env.reset_to(state)
    same(first, run(env, rest))
    # pickled state restores exactly into a freshly made env
    fresh = make_tiny()
    fresh.reset_to(pickle.loads(pickle.dumps(state)))
    same(first, run(fresh, rest))


def test_snapshots_share_storage_and_are_read_only():
    env = make_tiny(max_response_tokens=64)
    env.reset(options={"problem_index": 1})
    states = []
    for _ in range(20):
        env.step(5)
        states.append(env.snapshot())
    assert all(s.prompt_ids is states[0].prompt_ids for s in states)
    assert np.shares_memory(states[3].response_ids, states[10].response_ids)
    with pytest.raises(ValueError):
        states[3].response_ids[0] = 9
    # restoring an old state and writing new tokens leaves later snapshots intact
    env.reset_to(states[3])
    for _ in range(10):
        env.step(7)
    assert (states[10].response_ids == 5).all() and states[10].depth == 11


def test_restore_rng_state_continues_problem_draws():
    env = make_tiny()
    env.reset(seed=11)
    state = env.snapshot()
    draws = [env.reset()[1]["problem_id"] for _ in range(5)]
    env.reset_to(state)
    assert [env.reset()[1]["problem_id"] for _ in range(5)] == draws


def test_errors_are_clear():
    env = make_tiny()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(3)
    env.reset(options={"problem_index": 0})
    with pytest.raises(ValueError, match=r"in \[0, 46\)"):
        env.step(46)
    with pytest.raises(ValueError, match="token id"):
        env.step(-1)
    with pytest.raises(ValueError, match="problem_index"):
        env.reset(options={"problem_index": 999})
    with pytest.raises(ValueError, match="Unknown reset option"):
        env.reset(options={"problem": 1})
    env.step(1)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(3)
    with pytest.raises(TypeError, match="EnvState"):
        env.reset_to({"not": "a state"})  # type: ignore[arg-type]


def test_foreign_state_is_refused():
    env = make_tiny()
    env.reset(options={"problem_index": 0})
    state = env.snapshot()
    other_limits = make_tiny(max_response_tokens=13)
    with pytest.raises(ValueError, match="limits"):
        other_limits.reset_to(state)
    other_data = make_tiny(problems=TINY_PROBLEMS[:5])
    with pytest.raises(ValueError, match="data"):
        other_data.reset_to(state)


def test_foreign_tokenizer_is_refused():
    class OtherCodec(TinyCodec):
        def fingerprint(self) -> str:
            return "other"

    env = make_tiny()
    env.reset(options={"problem_index": 0})
    with pytest.raises(ValueError, match="tok"):
        make_tiny(tokenizer=OtherCodec()).reset_to(env.snapshot())


def test_render_modes():
    env = make_tiny(render_mode="ansi")
    env.reset(options={"problem_index": 4})
    env.step(TinyCodec().encode("9")[0])
    assert env.render() == "what is 4+5?\n9"
    with pytest.raises(ValueError, match="render_mode"):
        make_tiny(render_mode="rgb_array")


def test_state_equality_and_repr():
    env = make_tiny()
    env.reset(options={"problem_index": 0})
    s1 = env.snapshot()
    s2 = env.snapshot()
    assert s1 == s2 and isinstance(s1, EnvState) and "depth=0" in repr(s1)
    env.step(4)
    assert env.snapshot() != s1


def test_project_checker_on_tiny_env():
    check_reasoning_env(make_tiny(), make_fresh=make_tiny)
    with pytest.raises(ContractError, match="make_fresh="):  # no spec and no factory: said, not skipped
        check_reasoning_env(make_tiny())
    with pytest.raises(ContractError, match="fingerprint"):
        check_reasoning_env(make_tiny(), make_fresh=lambda: make_tiny(max_response_tokens=11))


def test_gymnasium_check_env_on_tiny_env():
    from gymnasium.utils.env_checker import check_env

    check_env(make_tiny(), skip_render_check=True)
    assert isinstance(make_tiny().action_space, gym.spaces.Discrete)


def test_prefix_of_a_later_state_equals_the_earlier_snapshot():
    env = make_tiny(max_response_tokens=20)
    env.reset(options={"problem_index": 6})
    early = None
    for k, a in enumerate([5, 6, 7, 8, 9, 10]):
        if k == 2:
            early = env.snapshot()
        env.step(a)
    late = env.snapshot()
    assert late.prefix(2) == early
    env.step(1)
    ended = env.snapshot()
    assert ended.done and not ended.prefix(3).done
    with pytest.raises(ValueError, match="depth"):
        ended.prefix(ended.depth)
    with pytest.raises(ValueError, match="depth"):
        late.prefix(99)
