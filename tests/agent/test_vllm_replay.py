"""The request-level rollout path (generate whole completions, replay them through the env), tested with
HFEngine in request mode: no vLLM needed, and the token-step path is the reference it must equal."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import Completion, SamplingParams
from deepgrpo_agent.rollout import CUT_STATUS, branch_rollouts, collect_rollouts, replay_completions
from deepgrpo_env.vector import ReasoningVectorEnv
from tests.agent.test_rollout import BUDGET, length_verifier, make_env, tiny_model


@pytest.fixture(scope="module")
def graded() -> Iterator[ReasoningVectorEnv]:
    venv = make_env(12, verifier=length_verifier)
    yield venv
    venv.close()


def engines(venv: ReasoningVectorEnv, seed: int = 0) -> tuple[HFEngine, HFEngine]:
    """The same model behind a token-step engine and a request-level one."""
    model = tiny_model(seed)
    step = HFEngine(model, vocab_size=int(venv.codec.vocab_size))
    request = HFEngine(model, vocab_size=int(venv.codec.vocab_size))
    request.request_level = True  # the rollout now calls generate() and replays the completions
    return step, request


def assert_same_batches(a, b) -> None:
    assert [x.tolist() for x in a.new_ids] == [x.tolist() for x in b.new_ids]
    for x, y in zip(a.logprobs, b.logprobs):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(a.rewards, b.rewards)
    assert a.grade_status == b.grade_status
    np.testing.assert_array_equal(a.terminated, b.terminated)
    np.testing.assert_array_equal(a.truncated, b.truncated)
    assert [s.response_ids.tolist() for s in a.states] == [s.response_ids.tolist() for s in b.states]
    assert [s.done for s in a.states] == [s.done for s in b.states]
    assert a.generated_tokens == b.generated_tokens and a.prefilled_tokens == b.prefilled_tokens
    assert b.engine_disagreements == 0


@pytest.mark.parametrize("max_new_tokens", [BUDGET, 5])  # 5: some rows are cut by the engine's budget
def test_request_path_equals_token_step_path_for_roots_and_branches(graded, max_new_tokens):
    venv = graded
    step, request = engines(venv)
    params = SamplingParams(max_new_tokens=max_new_tokens)
    a = collect_rollouts(venv, step, [4, 11, 7], 4, params, generator=torch.Generator().manual_seed(3))
    ended_after_step = venv.ended.copy()
    b = collect_rollouts(venv, request, [4, 11, 7], 4, params, generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(venv.ended, ended_after_step)  # cut rows left live in both paths
    assert_same_batches(a, b)
    lengths = [len(x) for x in a.new_ids]
    assert min(lengths) < max(lengths), "the fixture should mix early stops and full-length rows"
    long_row = int(np.argmax(lengths))
    states = [a.prefix_state(long_row, 2), a.prefix_state(0, 0), a.prefix_state(long_row, 1)]
    c = branch_rollouts(venv, step, states, 3, params, generator=torch.Generator().manual_seed(5),
                        temperatures=[0.7, 1.0, 1.3])
    d = branch_rollouts(venv, request, states, 3, params, generator=torch.Generator().manual_seed(5),
                        temperatures=[0.7, 1.0, 1.3])
    assert_same_batches(c, d)
    if max_new_tokens < BUDGET:
        assert CUT_STATUS in b.grade_status


def test_greedy_evaluation_path_is_the_same(graded):
    venv = graded
    step, request = engines(venv, seed=1)
    params = SamplingParams(0.0, 1.0, BUDGET)
    assert_same_batches(collect_rollouts(venv, step, [0, 1, 2, 3], 1, params),
                        collect_rollouts(venv, request, [0, 1, 2, 3], 1, params))


def _completion(ids: list[int], finish: str) -> Completion:
    arr = np.asarray(ids, dtype=np.int64)
    return Completion(arr, np.zeros(len(ids), dtype=np.float32), None, finish, 0)  # type: ignore[arg-type]


def _reset(venv: ReasoningVectorEnv, n: int) -> None:
    mask = np.zeros(venv.num_envs, dtype=bool)
    mask[:n] = True
    venv.reset(options={"reset_mask": mask, "problem_indices": [0] * n + [None] * (venv.num_envs - n)})
    from deepgrpo_agent.rollout import _park_others

    _park_others(venv, n)


def test_replay_lets_the_env_decide_and_counts_disagreements(graded):
    """Hand-made completions: agreeing ones are kept whole; where an engine ignored a stop token or stopped
    on a token the env does not stop on, the env's ending wins and the row is counted."""
    venv = graded
    stop = int(venv.codec.stop_token_ids[0])
    x = 5  # an ordinary token
    completions = [
        _completion([x, x, stop], "stop"),  # agrees: the env terminates at the stop token
        _completion([x] * BUDGET, "length"),  # agrees: the env truncates at its budget
        _completion([x, x, x], "length"),  # agrees: cut by an engine budget of 3 (row stays live)
        _completion([x, stop, x, x], "length"),  # disagrees: the engine ran past a stop token
        _completion([x, x], "stop"),  # disagrees: "stopped" on a token the env does not stop on
    ]
    budgets = [BUDGET, BUDGET, 3, BUDGET, BUDGET]
    _reset(venv, len(completions))
    result = replay_completions(venv, completions, np.arange(len(completions)), budgets)
    assert [len(t) for t in result.new_ids] == [3, BUDGET, 3, 2, 2]
    assert result.terminated.tolist() == [True, False, False, True, False]
    assert result.truncated.tolist() == [False, True, True, False, True]
    assert result.grade_status[2] == CUT_STATUS and result.grade_status[4] == CUT_STATUS
    assert result.disagreements == 2
    assert venv.ended[:5].tolist() == [True, True, False, True, False]  # cut rows stay live
    np.testing.assert_array_equal(venv.response_ids(2), [x, x, x])  # parked while others ran, then restored
    assert all(np.isnan(e).all() for e in result.entropies)  # no entropies from the engine: nan


def test_generate_checks_its_budgets(graded):
    _, request = engines(graded)
    with pytest.raises(ValueError, match="one int >= 1 per start sequence"):
        request.generate([np.array([3, 4])], SamplingParams(max_new_tokens=4), max_tokens=[0])
