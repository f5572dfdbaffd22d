"""Tests of the native vector env: batched semantics, autoreset modes, batched snapshot/reset_to."""

from __future__ import annotations

import numpy as np
import pytest

from deepgrpo_env import ReasoningEnv, ReasoningVectorEnv
from tests.helpers import TINY_PROBLEMS, TinyCodec

KW = dict(problems=TINY_PROBLEMS, verifier="numeric", prompt="plain", max_prompt_tokens=32,
          max_response_tokens=6)


def make_vec(n=4, **kwargs) -> ReasoningVectorEnv:
    return ReasoningVectorEnv(n, tokenizer=TinyCodec(), **{**KW, **kwargs})


def test_matches_single_envs_step_for_step():
    venv = make_vec(3, autoreset_mode="Disabled")
    singles = [ReasoningEnv(tokenizer=TinyCodec(), **KW) for _ in range(3)]
    vobs, vinfo = venv.reset(seed=5)
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=5 + i)
        np.testing.assert_array_equal(obs["input_ids"], vobs["input_ids"][i])
        assert info["problem_id"] == vinfo["problem_id"][i]
    rng = np.random.default_rng(0)
    for _ in range(6):
        actions = rng.integers(2, venv.single_action_space.n, size=3)
        vobs, vr, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            obs, r, term, trunc, info = env.step(int(actions[i]))
            np.testing.assert_array_equal(obs["input_ids"], vobs["input_ids"][i])
            assert (r, term, trunc) == (vr[i], vterm[i], vtrunc[i])
            if term or trunc:
                assert vinfo["_response"][i] and vinfo["response"][i] == info["response"]
    assert vtrunc.all()


def test_final_info_and_rewards(tiny_codec):
    venv = make_vec(2, autoreset_mode="Disabled")
    venv.reset(options={"problem_indices": [2, 3]})  # answers 5 and 7
    for ch in "5":
        venv.step(np.array([tiny_codec.encode(ch)[0]] * 2))
    _, rewards, term, trunc, info = venv.step(np.array([1, 1]))
    assert term.all() and not trunc.any()
    np.testing.assert_array_equal(rewards, [1.0, 0.0])
    assert list(info["correct"]) == [True, False] and list(info["grade_status"]) == ["ok", "ok"]
    np.testing.assert_array_equal(info["score"], [1.0, 0.0])


def test_disabled_mode_keeps_ended_envs_inert():
    venv = make_vec(2, autoreset_mode="Disabled")
    venv.reset(options={"problem_indices": [0, 1]})
    venv.step(np.array([1, 5]))  # env 0 ends
    obs, rewards, term, _, info = venv.step(np.array([7, 5]))
    assert (term[0] and rewards[0] == 0.0 and "_response" not in info) or not info["_response"][0]
    assert obs["length"][0, 0] == obs["prompt_length"][0, 0] + 1  # the ignored 7 was not written
    obs, _ = venv.reset(options={"reset_mask": np.array([True, False])})
    assert not venv.ended[0] and obs["length"][1, 0] == obs["prompt_length"][1, 0] + 2


def test_next_step_autoreset():
    venv = make_vec(2)
    venv.reset(seed=0)
    _, _, term, _, _ = venv.step(np.array([1, 5]))
    assert term[0]
    obs, rewards, term, _, info = venv.step(np.array([5, 5]))
    assert not term[0] and rewards[0] == 0.0 and obs["length"][0, 0] == obs["prompt_length"][0, 0]
    assert info["_problem_id"][0] and not info["_problem_id"][1]


def test_same_step_autoreset():
    venv = make_vec(2, autoreset_mode="SameStep")
    venv.reset(seed=0)
    obs, _, term, _, info = venv.step(np.array([1, 5]))
    assert term[0] and info["_final_obs"][0] and not info["_final_obs"][1]
    final = info["final_obs"][0]
    assert final["length"][0] == final["prompt_length"][0] + 1
    assert obs["length"][0, 0] == obs["prompt_length"][0, 0]  # already reset
    assert info["final_info"]["_response"][0]


def test_batched_snapshot_and_reset_to_branches():
    venv = make_vec(6, autoreset_mode="Disabled", max_response_tokens=10)
    venv.reset(options={"problem_indices": [4] * 6})
    for a in (5, 6, 7):
        venv.step(np.full(6, a))
    [state] = venv.snapshot(indices=[0])
    assert state.depth == 3
    venv.step(np.full(6, 9))
    obs, info = venv.reset_to([state] * 3, indices=[3, 4, 5])
    np.testing.assert_array_equal(obs["length"][3:, 0], obs["prompt_length"][3:, 0] + 3)
    np.testing.assert_array_equal(obs["length"][:3, 0], obs["prompt_length"][:3, 0] + 4)
    assert list(info["problem_id"][3:]) == ["t-4"] * 3 and not info["_problem_id"][0]
    np.testing.assert_array_equal(venv.response_ids(3), [5, 6, 7])
    np.testing.assert_array_equal(state.response_ids, [5, 6, 7])
    # the states restore into the single env too
    env = ReasoningEnv(tokenizer=TinyCodec(), **{**KW, "max_response_tokens": 10})
    obs1, _ = env.reset_to(state)
    np.testing.assert_array_equal(obs1["input_ids"], obs["input_ids"][3])


def test_copy_false_returns_the_buffer():
    venv = make_vec(2, copy=False)
    obs1, _ = venv.reset(seed=1)
    obs2, *_ = venv.step(np.array([5, 5]))
    assert obs1["input_ids"] is obs2["input_ids"]
    venv_copy = make_vec(2)
    a, _ = venv_copy.reset(seed=1)
    b, *_ = venv_copy.step(np.array([5, 5]))
    assert a["input_ids"] is not b["input_ids"] and not np.array_equal(a["length"], b["length"])


def test_bad_input():
    venv = make_vec(2)
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.array([5, 5]))
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        venv.step(np.array([5, 5, 5]))
    with pytest.raises(ValueError, match="token ids"):
        venv.step(np.array([5, 999]))
    with pytest.raises(IndexError, match="indices"):
        venv.snapshot(indices=[7])
    with pytest.raises(ValueError, match="autoreset_mode"):
        make_vec(2, autoreset_mode="Sometimes")
    with pytest.raises(ValueError, match="num_envs"):
        make_vec(0)


def test_restoring_an_ended_state_restores_its_end():
    """An ended (terminated) snapshot restored: the sub-env is ended, its snapshot equals the state, and in
    next-step autoreset mode the next step starts a new episode there (as after a real ending)."""
    venv = make_vec(2, autoreset_mode="Disabled")
    venv.reset(options={"problem_indices": [4, 4]})
    venv.step(np.array([5, 5]))
    _, _, term, _, _ = venv.step(np.array([1, 6]))  # token 1 is the stop token: row 0 terminates
    assert term[0] and not term[1]
    [ended] = venv.snapshot(indices=[0])
    assert ended.terminated and ended.done
    fresh = make_vec(2, autoreset_mode="Disabled")
    fresh.reset(seed=3)
    fresh.reset_to([ended], indices=[1])
    assert fresh.ended.tolist() == [False, True]
    assert fresh.snapshot(indices=[1])[0] == ended
    auto = make_vec(2)  # next-step autoreset
    auto.reset(seed=3)
    auto.reset_to([ended], indices=[0])
    obs, rewards, term, _, info = auto.step(np.array([5, 5]))
    assert info["_problem_id"][0] and not info["_problem_id"][1]  # row 0 was reset, row 1 stepped
    assert obs["length"][0, 0] == obs["prompt_length"][0, 0] and rewards[0] == 0.0 and not term[0]
