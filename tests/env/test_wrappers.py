"""Snapshot/restore through wrapper stacks, and the reward wrappers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import deepgrpo_env
from deepgrpo_env import FormatReward, LengthPenalty, ReasoningEnv, VerifierReward
from tests.helpers import TINY_PROBLEMS, TinyCodec


def base(**kw) -> ReasoningEnv:
    kw = {"verifier": "numeric", **kw}
    return ReasoningEnv(TINY_PROBLEMS, tokenizer=TinyCodec(), prompt="plain",
                        max_prompt_tokens=32, max_response_tokens=12, **kw)


def say(env, text):
    codec = TinyCodec()
    out = None
    for i in codec.encode(text):
        out = env.step(i)
    return env.step(1) if out is None or not (out[2] or out[3]) else out


def test_reset_to_through_gymnasium_wrappers():
    env = gym.wrappers.RecordEpisodeStatistics(
        gym.wrappers.TimeLimit(gym.wrappers.OrderEnforcing(base()), max_episode_steps=6)
    )
    env.reset(options={"problem_index": 3})
    env.step(5)
    env.step(6)
    state = deepgrpo_env.snapshot(env)
    fresh = gym.wrappers.RecordEpisodeStatistics(
        gym.wrappers.TimeLimit(gym.wrappers.OrderEnforcing(base()), max_episode_steps=6)
    )
    deepgrpo_env.reset_to(fresh, state)  # no reset() first: OrderEnforcing must accept the restore
    truncs = [fresh.step(5)[3] for _ in range(4)]
    assert truncs == [False, False, False, True]  # TimeLimit counter continued from depth 2
    with pytest.raises(AttributeError):
        env.snapshot()  # Gymnasium wrappers do not forward it: use deepgrpo_env.snapshot(env)


def test_observation_wrappers_are_reapplied():
    env = gym.wrappers.TransformObservation(base(), lambda o: {**o, "input_ids": o["input_ids"] * 0},
                                            observation_space=None)
    env.reset(options={"problem_index": 0})
    env.step(5)
    obs, _ = deepgrpo_env.reset_to(env, deepgrpo_env.snapshot(env))
    assert (obs["input_ids"] == 0).all()


def test_unknown_stateful_wrapper_warns():
    class Counting(gym.Wrapper):
        def reset(self, **kw):
            self.count = 0
            return super().reset(**kw)

    env = Counting(base())
    env.reset(options={"problem_index": 0})
    state = deepgrpo_env.snapshot(env)
    with pytest.warns(UserWarning, match="register_restore_hook"):
        deepgrpo_env.reset_to(env, state)


def test_verifier_reward_replaces_score_and_forwards_state():
    calls = []

    def contains_seven(response: str, reference: str) -> float | None:
        calls.append(response)
        return 1.0 if "7" in response else 0.0

    contains_seven.inline_safe = True  # type: ignore[attr-defined]  # run in-process so `calls` fills
    env = VerifierReward(base(verifier=None), contains_seven)
    env.reset(options={"problem_index": 0})  # reference "1"
    state = env.snapshot()
    _, r, term, _, info = say(env, "7")
    assert term and r == 1.0 and info["score"] == 1.0 and info["inner_score"] is None
    env.reset_to(state)
    _, r, *_ , info = say(env, "1")
    assert r == 0.0 and info["correct"] is False and calls == ["7", "1"]
    env.close()


def test_unscorable_is_reported_not_silently_zero():
    env = VerifierReward(base(verifier=None), lambda response, reference: None)
    env.reset(options={"problem_index": 0})
    _, r, _, _, info = say(env, "1")
    assert r == 0.0 and info["score"] is None and info["grade_status"] == "unscorable"
    assert info["correct"] is None
    env.close()


def test_format_and_length_compose():
    env = LengthPenalty(FormatReward(base(), bonus=0.5, missing_penalty=-0.25), coef=0.1, free_tokens=1)
    env.reset(options={"problem_index": 0})
    state = env.snapshot()
    _, r, *_, info = say(env, "1")  # correct, no box, 2 tokens (1 + stop)
    assert info["format_ok"] is False and np.isclose(r, 1.0 - 0.25 - 0.1)
    env = FormatReward(base(), bonus=0.5, pattern=r"=\d")
    env.reset_to(state)
    _, r, *_ = say(env, "=1")
    assert np.isclose(r, 1.5)  # last number is 1 -> correct (1.0), plus the 0.5 bonus


def test_reward_wrapper_bad_args():
    with pytest.raises(TypeError, match="callable"):
        VerifierReward(base(), verifier="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coef"):
        LengthPenalty(base(), coef=-1)
