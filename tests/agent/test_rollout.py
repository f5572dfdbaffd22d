"""Tests of the env-driven rollout loop: roots, branches, rewards from the env, cuts, parking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.rollout import CUT_STATUS, branch_rollouts, collect_rollouts
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.vector import ReasoningVectorEnv
from tests.agent import tiny
from tests.helpers import TINY_PROBLEMS, TinyCodec

BUDGET = 8  # max_response_tokens


def tiny_model(seed: int = 0, stop_scale: float = 1.0) -> LlamaForCausalLM:
    model = tiny.tiny_model(64, seed, max_position_embeddings=128).eval()
    with torch.no_grad():
        model.lm_head.weight *= 20.0  # peaky distributions: some rows stop early, others run to the budget
        model.lm_head.weight[1] *= stop_scale  # 0: the stop token (id 1) is never the argmax
    return model


def length_verifier(response: str, reference: str) -> float | None:
    """1.0 for odd-length responses, None (unscorable) for length 3, else 0.0."""
    if len(response) == 3:
        return None
    return float(len(response) % 2)


def make_env(num_envs: int, **kwargs: Any) -> ReasoningVectorEnv:
    """An env without grading unless `verifier=` is given (each graded env starts a worker process)."""
    options: dict[str, Any] = dict(
        problems=list(TINY_PROBLEMS),
        tokenizer=TinyCodec(),
        verifier=None,
        prompt=PromptTemplate(style="plain", chat=False),
        max_prompt_tokens=32,
        max_response_tokens=BUDGET,
        autoreset_mode="Disabled",
        copy=False,
    )
    options.update(kwargs)
    return ReasoningVectorEnv(num_envs, **options)


@pytest.fixture(scope="module")
def graded() -> Iterator[ReasoningVectorEnv]:
    """One graded env shared by the tests (rollouts use its first sub-envs and park the rest)."""
    venv = make_env(8, verifier=length_verifier)
    yield venv
    venv.close()


def engine_for(venv: ReasoningVectorEnv, seed: int = 0, stop_scale: float = 1.0) -> HFEngine:
    return HFEngine(tiny_model(seed, stop_scale), vocab_size=int(venv.codec.vocab_size))


def test_roots_carry_env_rewards_and_shapes(graded):
    venv = graded  # two more sub-envs than needed: they get parked
    codec = venv.codec
    batch = collect_rollouts(
        venv,
        engine_for(venv),
        [4, 11],
        3,
        SamplingParams(max_new_tokens=BUDGET),
        generator=torch.Generator().manual_seed(0),
    )
    assert len(batch) == 6
    np.testing.assert_array_equal(batch.problem_index, [4, 4, 4, 11, 11, 11])
    np.testing.assert_array_equal(batch.group, [0, 0, 0, 1, 1, 1])
    assert batch.problem_id == ["t-4"] * 3 + ["t-11"] * 3
    np.testing.assert_array_equal(batch.prompt_ids[3], venv.prompt_ids(3))
    assert all(len(p) == 0 for p in batch.prefix_ids)
    assert batch.generated_tokens == sum(len(x) for x in batch.new_ids)
    assert batch.prefilled_tokens == len(batch.prompt_ids[0]) + len(batch.prompt_ids[3])
    for i, ids in enumerate(batch.new_ids):
        assert len(batch.logprobs[i]) == len(ids) == len(batch.entropies[i]) >= 1
        np.testing.assert_array_equal(ids, batch.states[i].response_ids)
        stopped = ids[-1] in codec.stop_token_ids
        assert batch.terminated[i] == stopped and batch.truncated[i] == (not stopped)
        assert stopped or len(ids) == BUDGET
        expected = length_verifier(codec.decode(ids.tolist()), "")
        if expected is None:
            assert np.isnan(batch.rewards[i]) and batch.correct[i] is None
            assert batch.grade_status[i] == "unscorable"
        else:
            assert batch.rewards[i] == expected and batch.correct[i] == (expected > 0.5)
            assert batch.grade_status[i] == "ok"
    assert batch.terminated.any() and batch.truncated.any()  # both endings are exercised
    assert venv.ended.all()  # the parked sub-envs 6, 7 ended too, and were never graded


def test_rollout_logprobs_match_a_full_forward_pass(graded):
    venv = graded
    engine = engine_for(venv)
    params = SamplingParams(temperature=0.7, max_new_tokens=BUDGET)
    batch = collect_rollouts(venv, engine, [0, 17], 2, params, generator=torch.Generator().manual_seed(1))
    for i in range(len(batch)):
        ids = torch.from_numpy(np.concatenate([batch.prompt_ids[i], batch.new_ids[i]]))[None]
        with torch.no_grad():
            logits = engine.model(ids).logits[0, len(batch.prompt_ids[i]) - 1 : -1, : venv.codec.vocab_size]
        logp = (logits / 0.7).log_softmax(-1).gather(1, torch.from_numpy(batch.new_ids[i])[:, None])[:, 0]
        np.testing.assert_allclose(batch.logprobs[i], logp.numpy(), atol=1e-4)


def test_branch_from_a_snapshot_equals_continuing_the_original():
    venv = make_env(1)
    engine = engine_for(venv, seed=3)
    params = SamplingParams(temperature=1.0, max_new_tokens=BUDGET)
    venv.reset(options={"problem_indices": [9]})
    session = engine.start([venv.prompt_ids(0)], params)
    generator = torch.Generator().manual_seed(11)
    fork_depth, fork = 3, None
    tokens: list[int] = []
    while not venv.ended[0]:
        if len(tokens) == fork_depth:
            fork = (venv.snapshot([0])[0], generator.get_state())
        tok, _, _ = session.sample(generator)
        tokens.append(int(tok[0]))
        venv.step(tok)
        if not venv.ended[0]:
            session.advance(tok, ~venv.ended)
    assert fork is not None and len(tokens) > fork_depth, "pick a seed whose episode passes the fork"
    state, rng_state = fork
    branch = branch_rollouts(
        venv, engine, [state], 1, params, generator=torch.Generator().set_state(rng_state)
    )
    np.testing.assert_array_equal(branch.prefix_ids[0], tokens[:fork_depth])
    np.testing.assert_array_equal(branch.new_ids[0], tokens[fork_depth:])
    assert branch.terminated[0] == (tokens[-1] == 1) and branch.truncated[0] == (tokens[-1] != 1)
    assert np.isnan(branch.rewards[0]) and branch.grade_status == ["ungraded"]  # verifier=None


def test_branches_prefill_each_prefix_once_and_greedy_branches_replay_the_root(graded):
    venv = graded
    engine = engine_for(venv, seed=4, stop_scale=0.0)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=BUDGET)
    roots = collect_rollouts(venv, engine, [2, 5], 1, greedy)
    depths = [min(2, len(x) - 1) for x in roots.new_ids]
    pivots = [roots.prefix_state(i, d) for i, d in enumerate(depths)]
    shapes: list[tuple[int, ...]] = []
    inner = engine.model.forward

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(kwargs["input_ids"].shape))
        return inner(*args, **kwargs)

    engine.model.forward = counting_forward
    branches = branch_rollouts(venv, engine, pivots, 3, greedy)
    assert [s for s in shapes if s[1] > 1] == [(2, max(len(roots.prompt_ids[i]) + depths[i] for i in (0, 1)))]
    assert branches.prefilled_tokens == sum(len(roots.prompt_ids[i]) + depths[i] for i in (0, 1))
    np.testing.assert_array_equal(branches.group, [0, 0, 0, 1, 1, 1])
    for row in range(6):
        root = row // 3
        np.testing.assert_array_equal(branches.prefix_ids[row], roots.new_ids[root][: depths[root]])
        # Greedy is deterministic: every branch rewrites the root's own suffix and earns its reward.
        np.testing.assert_array_equal(branches.new_ids[row], roots.new_ids[root][depths[root] :])
        np.testing.assert_array_equal(branches.rewards[row], roots.rewards[root])


def test_max_new_tokens_cut_counts_as_truncated_with_zero_reward(graded):
    venv = graded
    batch = collect_rollouts(
        venv,
        engine_for(venv),
        [1, 2],
        4,
        SamplingParams(max_new_tokens=3),
        generator=torch.Generator().manual_seed(0),
    )
    cut = np.array([s == CUT_STATUS for s in batch.grade_status])
    assert cut.any() and not cut.all()
    assert (batch.truncated[cut]).all() and not batch.terminated[cut].any()
    assert (batch.rewards[cut] == 0.0).all() and all(c is False for c in batch.correct[cut])
    assert all(len(x) == 3 for x in np.array(batch.new_ids, dtype=object)[cut])
    for i in np.flatnonzero(~cut):  # rows the env ended were graded by it
        expected = length_verifier(venv.codec.decode(batch.new_ids[i].tolist()), "")
        assert batch.rewards[i] == expected or (expected is None and np.isnan(batch.rewards[i]))
    # The next call starts from a clean env again (cut sub-envs are reset, not stepped further).
    again = collect_rollouts(venv, engine_for(venv), [3], 1, SamplingParams(max_new_tokens=BUDGET))
    assert len(again) == 1 and venv.ended.all()


def test_misuse_raises_clear_errors():
    engine = engine_for(make_env(1))
    params = SamplingParams(max_new_tokens=4)
    with pytest.raises(ValueError, match="num_envs"):
        collect_rollouts(make_env(3), engine, [0, 1], 2, params)
    with pytest.raises(ValueError, match="Disabled"):
        collect_rollouts(make_env(2, autoreset_mode="NextStep"), engine, [0], 2, params)
    venv = make_env(2)
    done = collect_rollouts(venv, engine, [0], 1, SamplingParams(temperature=0.0, max_new_tokens=BUDGET))
    with pytest.raises(ValueError, match="ended states"):
        branch_rollouts(venv, engine, done.states, 2, params)
    with pytest.raises(ValueError, match="depth"):
        done.prefix_state(0, len(done.new_ids[0]))
