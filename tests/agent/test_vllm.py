"""VLLMEngine for real (vLLM in this process, on a tiny random model): log-probs against a full HF forward,
stop conditions that agree with the env's, seeds, branching with prefix caching, weight sync.

Marked ``vllm``; skipped with a reason when vLLM is not importable (CI installs it: scripts/test.sh).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.engine.vllm import VLLMEngine, vllm_available
from deepgrpo_agent.rollout import CUT_STATUS, branch_rollouts, collect_rollouts, replay_completions
from deepgrpo_env.vector import ReasoningVectorEnv
from tests.agent import tiny
from tests.agent.test_rollout import BUDGET, length_verifier, make_env

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (bash scripts/setup.sh --vllm)"),
]

LOGPROB_ATOL = 1e-4  # fp32: engine vs trainer forward (the goal)


def vllm_tiny_model(seed: int = 0) -> LlamaForCausalLM:
    """64 logits (more than the env's vocabulary), head size 32 (vLLM's CPU kernels need >= 32)."""
    model = tiny.tiny_model(64, seed, hidden=64, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=128).eval()
    with torch.no_grad():
        model.lm_head.weight *= 8.0  # peaky: some rows stop early (token 1), others run to the budget
        model.lm_head.weight[1] += 0.15 * model.lm_head.weight[1:].mean(0)
    return model


@pytest.fixture(scope="module")
def graded() -> Iterator[ReasoningVectorEnv]:
    venv = make_env(12, verifier=length_verifier)
    yield venv
    venv.close()


@pytest.fixture(scope="module")
def engine(graded: ReasoningVectorEnv) -> Iterator[VLLMEngine]:
    eng = VLLMEngine(vllm_tiny_model(), vocab_size=int(graded.codec.vocab_size), max_model_len=64,
                     kv_cache_gb=0.25)
    yield eng
    eng.close()


def reference_logprobs(model: Any, context: np.ndarray, new: np.ndarray, temperature: float, vocab: int) -> np.ndarray:
    """log p(new | context) from one full forward pass, over the env's vocabulary."""
    ids = torch.from_numpy(np.concatenate([context, new]).astype(np.int64))[None]
    with torch.no_grad():
        logits = model(ids).logits[0, len(context) - 1 : -1, :vocab].float()
    if temperature > 0:
        logits = logits / temperature
    return logits.log_softmax(-1).gather(1, torch.from_numpy(new.astype(np.int64))[:, None])[:, 0].numpy()


def max_logprob_error(model: Any, starts: list[np.ndarray], completions: list[Any], repeat: int,
                      temps: np.ndarray, vocab: int) -> float:
    worst = 0.0
    for j, c in enumerate(completions):
        if len(c.token_ids):
            ref = reference_logprobs(model, starts[j // repeat], c.token_ids, float(temps[j]), vocab)
            worst = max(worst, float(np.abs(ref - c.logprobs).max()))
    return worst


SEQS = [np.array([3, 4, 5, 6, 7, 8, 9]), np.array([10, 11]), np.array([12, 13, 14, 15] * 5)]


def test_logprobs_match_a_full_forward_over_the_env_vocabulary(engine):
    model = vllm_tiny_model()
    for temperature, temps in ((1.0, None), (0.7, None), (1.0, np.repeat([0.5, 1.0, 1.6], 3))):
        params = SamplingParams(temperature, 1.0, 10)
        out = engine.generate(SEQS, params, repeat=3, temperatures=temps, generator=torch.Generator().manual_seed(1))
        assert len(out) == 9 and all(len(c.token_ids) == 10 and c.finish == "length" for c in out)
        assert all(c.token_ids.max() < engine.vocab_size for c in out)  # ids past the env's vocabulary: never
        row_temps = np.full(9, temperature) if temps is None else temps
        assert max_logprob_error(model, SEQS, out, 3, row_temps, engine.vocab_size) <= LOGPROB_ATOL
        assert len({tuple(c.token_ids.tolist()) for c in out}) > 3  # copies of a sequence sample independently


def test_greedy_equals_hf_greedy(engine, graded):
    model = vllm_tiny_model()
    hf = HFEngine(model, vocab_size=engine.vocab_size)
    params = SamplingParams(0.0, 1.0, 8)
    got = engine.generate(SEQS, params)
    want = hf.generate(SEQS, params)
    assert [c.token_ids.tolist() for c in got] == [c.token_ids.tolist() for c in want]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=LOGPROB_ATOL)


def test_seeds_make_completions_reproducible(engine):
    params = SamplingParams(1.0, 1.0, 12)
    a = engine.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(7))
    b = engine.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(7))
    c = engine.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(8))
    assert [x.token_ids.tolist() for x in a] == [x.token_ids.tolist() for x in b]
    assert [x.token_ids.tolist() for x in a] != [x.token_ids.tolist() for x in c]


def test_many_seeded_requests_longer_than_one_prefill_step(engine):
    """vLLM 0.32 on the CPU crashed ("CPU Generator does not use offset") once chunked prefill split a
    seeded request across steps: 240 rows of 40 tokens are 9,600 prompt tokens, over one step's 4,096."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(3, 12, size=40) for _ in range(240)]
    params = SamplingParams(1.0, 1.0, 6)
    a = engine.generate(seqs, params, generator=torch.Generator().manual_seed(5))
    b = engine.generate(seqs, params, generator=torch.Generator().manual_seed(5))
    assert len(a) == 240 and all(1 <= len(x.token_ids) <= 6 for x in a)
    assert [x.token_ids.tolist() for x in a] == [x.token_ids.tolist() for x in b]


def check_rows_end_where_the_env_says(batch: Any, stop: int, budgets: np.ndarray, max_new_tokens: int) -> None:
    """Every row: no stop token before its last token; terminated iff it ends with the stop token;
    otherwise it used its whole budget (the env's remaining budget, or the engine's when smaller)."""
    assert batch.engine_disagreements == 0
    for j, ids in enumerate(batch.new_ids):
        assert stop not in ids[:-1].tolist()
        assert bool(batch.terminated[j]) == (len(ids) > 0 and ids[-1] == stop)
        if not batch.terminated[j]:
            assert len(ids) == min(int(budgets[j]), max_new_tokens)
            assert (batch.grade_status[j] == CUT_STATUS) == (int(budgets[j]) > max_new_tokens)


@pytest.mark.parametrize("max_new_tokens", [BUDGET, 5])
def test_completions_are_never_cut_differently_by_engine_and_env(engine, graded, max_new_tokens):
    venv = graded
    stop = int(venv.codec.stop_token_ids[0])
    params = SamplingParams(max_new_tokens=max_new_tokens)
    seen_stop = seen_budget = 0
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        roots = collect_rollouts(venv, engine, [1, 5, 9], 4, params, generator=gen)
        check_rows_end_where_the_env_says(roots, stop, np.full(len(roots), BUDGET), max_new_tokens)
        seen_stop += int(roots.terminated.sum())
        seen_budget += int((~roots.terminated).sum())
        lengths = [len(x) for x in roots.new_ids]
        row = int(np.argmax(lengths))
        depths = sorted({0, 1, min(3, lengths[row] - 1)})
        states = [roots.prefix_state(row, d) for d in depths]
        branches = branch_rollouts(venv, engine, states, 3, params, generator=gen, temperatures=[0.8] * len(states))
        remaining = np.repeat([BUDGET - s.depth for s in states], 3)
        check_rows_end_where_the_env_says(branches, stop, remaining, max_new_tokens)
        for j, s in enumerate(branches.states):  # the env holds prefix + new tokens, nothing else
            np.testing.assert_array_equal(s.response_ids, np.concatenate([branches.prefix_ids[j], branches.new_ids[j]]))
    assert seen_stop > 0 and seen_budget > 0, "the model should mix stops and budget ends"


def test_replay_detects_an_engine_that_ignores_the_env_stop_tokens(engine, graded):
    """The negative control of the agreement test: without the env's stop ids, rows run past them."""
    venv = graded
    params = SamplingParams(max_new_tokens=BUDGET)
    prompts_rows = collect_rollouts(venv, engine, [1, 5, 9], 4, params, generator=torch.Generator().manual_seed(0))
    assert prompts_rows.terminated.any()
    completions = engine.generate([prompts_rows.prompt_ids[0], prompts_rows.prompt_ids[4], prompts_rows.prompt_ids[8]],
                                  params, repeat=4, stop_token_ids=(), generator=torch.Generator().manual_seed(0))
    mask = np.zeros(venv.num_envs, dtype=bool)
    mask[:12] = True
    venv.reset(options={"reset_mask": mask, "problem_indices": np.repeat([1, 5, 9], 4).tolist()})
    result = replay_completions(venv, completions, np.arange(12), [BUDGET] * 12)
    assert result.disagreements == int(result.terminated.sum()) > 0  # every stop the engine ran past


def test_branches_reuse_the_cached_prefix(engine):
    prefix = np.arange(2, 2 + 45) % 40 + 2  # 45 tokens: one full 32-token block
    out = engine.generate([prefix], SamplingParams(1.0, 1.0, 8), repeat=6, generator=torch.Generator().manual_seed(0))
    cached = [c.cached_tokens for c in out]
    assert all(c >= engine.block_size for c in cached[1:]), cached


def test_weight_sync_after_an_optimizer_step(graded):
    model = vllm_tiny_model(seed=3)
    vocab = int(graded.codec.vocab_size)
    with VLLMEngine(model, vocab_size=vocab, max_model_len=64, kv_cache_gb=0.25) as eng:
        params = SamplingParams(1.0, 1.0, 10)
        before = eng.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for c, seq in zip(before[::2], SEQS):  # a few steps raising the sampled tokens' likelihood
            ids = torch.from_numpy(np.concatenate([seq, c.token_ids]))[None]
            loss = -model(ids).logits[0, len(seq) - 1 : -1, :vocab].log_softmax(-1).gather(
                1, torch.from_numpy(c.token_ids)[:, None]).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        stale = eng.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(1))
        ones = np.ones(6)
        assert max_logprob_error(model, SEQS, stale, 2, ones, vocab) > 1e-2  # the engine still has old weights
        eng.sync_weights(model)
        fresh = eng.generate(SEQS, params, repeat=2, generator=torch.Generator().manual_seed(1))
        assert max_logprob_error(model, SEQS, fresh, 2, ones, vocab) <= LOGPROB_ATOL


def test_token_step_sessions_are_refused_with_a_hint(engine):
    with pytest.raises(TypeError, match="call `generate` instead"):
        engine.start(SEQS, SamplingParams())


def test_requests_longer_than_max_model_len_are_refused(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([np.arange(2, 62) % 40 + 2], SamplingParams(max_new_tokens=8))

