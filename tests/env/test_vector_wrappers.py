"""Reward wrappers on the native vector env: rewards, info columns, and snapshot/reset_to through them."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from deepgrpo_env import ReasoningVectorEnv
from deepgrpo_env.vector_wrappers import (
    EpisodeRewardWrapper,
    FormatReward,
    LengthPenalty,
    ReasoningVectorWrapper,
    VerifierReward,
)
from tests.helpers import TINY_PROBLEMS, TinyCodec

CODEC = TinyCodec()


def venv(n: int = 3, **kw) -> ReasoningVectorEnv:
    kw = {"verifier": "numeric", **kw}
    return ReasoningVectorEnv(n, TINY_PROBLEMS, tokenizer=CODEC, prompt="plain", max_prompt_tokens=32,
                              max_response_tokens=12, autoreset_mode="Disabled", **kw)


def write(env, texts: list[str]):
    """Steps sub-env i through texts[i] then the stop token; returns (rewards, info) at each row's end."""
    n = env.num_envs
    seqs = [CODEC.encode(t) + [1] for t in texts]
    rewards, infos = np.zeros(n), [None] * n
    for t in range(max(len(s) for s in seqs)):
        acts = np.array([s[t] if t < len(s) else 1 for s in seqs])
        _, r, _, _, info = env.step(acts)
        for i in np.flatnonzero(info.get("_response", np.zeros(n, bool))):
            rewards[i] = r[i]
            infos[i] = {k: info[k][i] for k in info if not k.startswith("_") and len(info[k]) == n}
    return rewards, infos


def start(env, problems=(0, 1, 2)):
    env.reset(options={"problem_indices": list(problems)})


def test_verifier_reward_replaces_score_reward_and_correct():
    def last_char_is_7(response: str, reference: str) -> float | None:
        return None if not response else float(response.strip().endswith("7"))

    env = VerifierReward(venv(verifier=None), last_char_is_7, timeout=5.0)
    env.grader.inline = True  # a closure over nothing, bounded: no worker process needed for a unit test
    start(env)
    rewards, infos = write(env, ["1", "xx7", ""])  # references are 1, 3, 5
    assert rewards.tolist() == [0.0, 1.0, 0.0]
    assert [i["correct"] for i in infos] == [False, True, None]
    assert [i["grade_status"] for i in infos] == ["ok", "ok", "unscorable"]
    assert np.isnan(infos[2]["score"]) and np.isnan(infos[0]["inner_score"])  # the env had no verifier
    env.close()


def test_format_and_length_compose_on_top_of_the_env_verifier():
    env = LengthPenalty(FormatReward(venv(), bonus=0.5, pattern="="), coef=0.1, free_tokens=2)
    start(env)
    # references 1, 3, 5; response_ids count the stop token: 3, 2 and 5 ids
    rewards, infos = write(env, ["=1", "3", "= 55"])
    assert rewards == pytest.approx([1.0 + 0.5 - 0.1, 1.0 - 0.0, 0.0 + 0.5 - 0.3])
    assert [bool(i["format_ok"]) for i in infos] == [True, False, True]
    assert [float(i["length_penalty"]) for i in infos] == pytest.approx([0.1, 0.0, 0.3])


def test_snapshot_and_reset_to_pass_through_the_stack():
    plain, wrapped = venv(), FormatReward(LengthPenalty(venv(), coef=0.05), bonus=1.0, pattern="3")
    for env in (plain, wrapped):
        start(env)
        env.step(np.array(CODEC.encode("3")[:1] * 3))
    state = wrapped.snapshot([1])[0]
    other = plain.snapshot([1])[0]  # rng states differ (unseeded envs); the episode is the same
    assert (state.problem, state.response_ids.tolist()) == (other.problem, other.response_ids.tolist())
    wrapped.reset_to([state] * 3, [0, 1, 2])  # one state into every sub-env: how branches are made
    assert not wrapped.ended.any() and wrapped.prompt_ids(2).tolist() == plain.prompt_ids(1).tolist()
    rewards, _ = write(wrapped, ["", "", "0"])  # responses "3", "3", "30" (+ the stop token)
    assert rewards == pytest.approx([1.0 + 1.0 - 0.1, 1.0 + 1.0 - 0.1, 0.0 + 1.0 - 0.15])


def test_public_seams_are_forwarded():
    base = venv()
    env = LengthPenalty(FormatReward(base))
    assert env.num_problems == base.num_problems == len(TINY_PROBLEMS)
    assert env.problem_id(4) == base.problem_id(4) == "t-4"
    assert env.codec is base.codec and env.limits == base.limits and env.fingerprint == base.fingerprint
    assert env.autoreset_mode == gym.vector.AutoresetMode.DISABLED and env.num_envs == 3
    assert env.unwrapped is base and isinstance(env, gym.vector.VectorWrapper)


def test_user_subclass_and_errors():
    class Plus(EpisodeRewardWrapper):
        def episode_rewards(self, rewards, info, rows):
            rewards[rows] += 10.0
            return rewards

    env = Plus(venv())
    start(env)
    assert write(env, ["1", "0", "0"])[0].tolist() == [11.0, 10.0, 10.0]

    class Bad(EpisodeRewardWrapper):
        def episode_rewards(self, rewards, info, rows):
            return rewards[:1]

    bad = Bad(venv())
    start(bad)
    with pytest.raises(ValueError, match="one per sub-env"):
        write(bad, ["1", "2", "3"])
    with pytest.raises(TypeError, match="deepgrpo vector env"):
        ReasoningVectorWrapper(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")]))
    with pytest.raises(ValueError, match="coef"):
        LengthPenalty(venv(), coef=-1.0)
