"""Reference-vs-fast tests of the update's fast paths (docs/performance.md).

- the fused log-prob (:func:`~deepgrpo_agent.scoring.chosen_logprobs`: head on the real target positions
  only, chunked fp32 log-softmax) against the reference (B, T, V) path;
- the shared-context forward (:func:`~deepgrpo_agent.scoring.shared_prefix_logprobs`: a group's prompt
  computed once) against packed rows;
- a whole :func:`~deepgrpo_agent.update.policy_update` with both on against both off;
- HFEngine passes its KV cache under the name the model's ``forward`` takes.

Tolerances: fp32 paths agree to float rounding (1e-5); under bf16 autocast the paths multiply the
same bf16 operands but in matmuls of other shapes, so sums round differently (bound: the bf16
log-prob bound of tests/agent/test_precision.py, and 5% of a gradient's largest entry).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import update
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.precision import Precision
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.scoring import (
    cache_keyword,
    can_share_prefix,
    pack,
    shared_context_groups,
    shared_prefix_logprobs,
    token_logprobs,
)
from tests.agent.test_precision import BF16_LOGPROB_BOUND
from tests.agent.tiny import tiny_model

CPU = torch.device("cpu")
HEAD = 300  # the model's (padded) output size
VOCAB = 290  # the action space: the last 10 logits are not actions
FP32_ATOL = 1e-5
BF16_GRAD_RTOL = 0.05


def _autocast(bf16: bool) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _grads_after(model: torch.nn.Module, logp: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(1))
    (logp * weights).sum().backward()  # type: ignore[no-untyped-call]
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _assert_grads_close(ref: list[torch.Tensor], fast: list[torch.Tensor], bf16: bool) -> None:
    for a, b in zip(ref, fast):
        scale = float(a.abs().max()) + 1e-12
        err = float((a - b).abs().max())
        assert err <= (BF16_GRAD_RTOL * scale if bf16 else FP32_ATOL * max(scale, 1.0)), (err, scale)


def _rows(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two groups sharing a context each (3 and 2 rows), one lone row; one empty target."""
    a, b, c = (rng.integers(0, VOCAB, size=n) for n in (7, 4, 5))
    contexts = [a, b, a, a, c, b]
    targets = [rng.integers(0, VOCAB, size=n) for n in (4, 1, 6, 0, 3, 5)]
    return contexts, targets


@pytest.mark.parametrize("bf16", [False, True])
def test_fused_logprobs_match_the_reference_path(bf16):
    model = tiny_model(HEAD, hidden=64)
    rng = np.random.default_rng(0)
    contexts, targets = _rows(rng)
    batch = pack(contexts, targets, CPU)
    temps = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.5, 1.0])
    out = {}
    for fused in (False, True):
        with _autocast(bf16):
            logp = token_logprobs(model, batch, temps, vocab_size=VOCAB, fused=fused)
        out[fused] = (logp.detach(), _grads_after(model, logp))
    assert out[True][0].dtype == torch.float32
    assert torch.equal(out[True][0] == 0, ~batch.mask)  # padding holds 0, real tokens are log-probs < 0
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=BF16_LOGPROB_BOUND if bf16 else FP32_ATOL)
    _assert_grads_close(out[False][1], out[True][1], bf16)


@pytest.mark.parametrize("bf16", [False, True])
def test_shared_prefix_matches_packed_rows(bf16):
    model = tiny_model(HEAD, hidden=64)
    rng = np.random.default_rng(1)
    contexts, targets = _rows(rng)
    assert can_share_prefix(model, contexts)
    temps = torch.tensor([1.0, 0.7, 1.3, 1.0, 0.5, 1.0])
    batch = pack(contexts, targets, CPU)
    with _autocast(bf16):
        ref = token_logprobs(model, batch, temps, vocab_size=VOCAB, fused=False)
    ref_grads = _grads_after(model, ref)
    with _autocast(bf16):
        fast, mask = shared_prefix_logprobs(model, contexts, targets, CPU, temps, vocab_size=VOCAB)
    fast_grads = _grads_after(model, fast)
    assert torch.equal(mask, batch.mask)
    torch.testing.assert_close(fast.detach(), ref.detach(), rtol=0, atol=BF16_LOGPROB_BOUND if bf16 else FP32_ATOL)
    _assert_grads_close(ref_grads, fast_grads, bf16)


def test_share_prefix_applies_only_where_it_saves_work():
    model = tiny_model(HEAD)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, VOCAB, size=5), rng.integers(0, VOCAB, size=5)
    assert can_share_prefix(model, [a, a.copy(), b])
    assert not can_share_prefix(model, [a, b])  # nothing shared
    assert not can_share_prefix(model, [a[:1], a[:1].copy()])  # a 1-token context has no prefix to cache
    groups, heads = shared_context_groups([a, b, a.copy(), b.copy(), a])
    assert groups.tolist() == [0, 1, 0, 1, 0] and heads == [0, 1]


def _grpo_samples(rng: np.random.Generator) -> TrainSamples:
    """Two prompts x 4 completions, as GRPO trains them (one advantage exactly 0)."""
    prompts = [rng.integers(0, VOCAB, size=n) for n in (9, 6)]
    contexts = [prompts[i // 4] for i in range(8)]
    targets = [rng.integers(0, VOCAB, size=n) for n in (5, 2, 7, 3, 4, 6, 1, 5)]
    adv = np.array([1.0, -0.5, 0.0, 0.7, -1.2, 0.3, 0.9, -0.4], dtype=np.float32)
    return TrainSamples(contexts, targets, adv, np.zeros(8, dtype=np.int64))


@pytest.mark.parametrize("bf16", [False, True])
def test_policy_update_with_fast_paths_equals_the_reference(bf16):
    """Micro-batches of 3, skip off: parameters after the update agree. fp32 takes two epochs (old log-probs,
    clipping); bf16 one, since at this learning rate a bf16 ratio near a clip boundary can clip a token on
    one path only (measured: clip fraction 0.667 vs 0.697 under transformers 5.19), which is rounding, not error."""
    samples = _grpo_samples(np.random.default_rng(3))
    settings = update.UpdateSettings(ppo_epochs=1 if bf16 else 2, micro_batch_size=3, max_new_tokens=8,
                                     skip_zero_advantage_rows=False)
    precision = Precision(torch.float32, torch.bfloat16 if bf16 else torch.float32, "cpu")
    results = {}
    for fast in (False, True):
        model = tiny_model(HEAD, hidden=64)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        cfg = dataclasses.replace(settings, share_prefix=fast, fused_logprobs=fast)
        metrics = update.policy_update(model, opt, sched, samples, cfg, stream_weights={0: 1.0},
                                       vocab_size=VOCAB, precision=precision)
        results[fast] = (metrics, [p.detach().clone() for p in model.parameters()])
    ref, fast_ = results[False], results[True]
    assert fast_[0]["train/computed_tokens"] < ref[0]["train/computed_tokens"]
    assert ref[0]["train/computed_tokens"] == ref[0]["train/processed_tokens"] == 15 * 4 + 33
    # Each prompt but its last token (the first suffix token) once per micro-batch that holds its rows:
    # rows sorted by group then length make micro-batches [a a a], [a b b], [b b]; plus one suffix
    # position per target token.
    assert fast_[0]["train/computed_tokens"] == (8 + (8 + 5) + 5) + 33
    assert fast_[0]["loss/total"] == pytest.approx(ref[0]["loss/total"], abs=1e-3 if bf16 else 1e-6)
    start = [p.detach() for p in tiny_model(HEAD, hidden=64).parameters()]
    # The update each path took: relative L2 distance over all parameters.
    step = torch.cat([(a - p0).flatten() for p0, a in zip(start, ref[1])]).norm()
    diff = torch.cat([(a - b).flatten() for a, b in zip(ref[1], fast_[1])]).norm()
    assert float(diff) <= (BF16_GRAD_RTOL if bf16 else 1e-4) * float(step)


def test_on_policy_ratio_is_exactly_one_on_the_shared_prefix_path_in_bf16(monkeypatch):
    samples = _grpo_samples(np.random.default_rng(4))
    settings = update.UpdateSettings(ppo_epochs=2, micro_batch_size=4, max_new_tokens=8)
    model = tiny_model(HEAD, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = update.clipped_policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, **kw: Any) -> Any:
        calls.append((logp.detach().clone(), old.clone()))
        return real(logp, old, adv, **kw)

    shared: list[bool] = []
    real_share = update.shared_prefix_logprobs

    def share_spy(*a: Any, **kw: Any) -> Any:
        shared.append(True)
        return real_share(*a, **kw)

    monkeypatch.setattr(update, "clipped_policy_loss", spy)
    monkeypatch.setattr(update, "shared_prefix_logprobs", share_spy)
    update.policy_update(model, opt, sched, samples, settings, stream_weights={0: 1.0}, vocab_size=VOCAB,
                         precision=Precision(torch.float32, torch.bfloat16, "cpu"))
    assert shared  # the path under test ran
    first_epoch = calls[: len(calls) // 2]
    assert first_epoch
    for logp, old in first_epoch:
        torch.testing.assert_close(logp, old, rtol=0, atol=0)


def test_cache_keyword_follows_the_forward_signature():
    class New(torch.nn.Module):
        def forward(self, input_ids: Any = None, cache: Any = None) -> Any: ...

    class Old(torch.nn.Module):
        def forward(self, input_ids: Any = None, past_key_values: Any = None) -> Any: ...

    assert cache_keyword(New()) == "cache"
    assert cache_keyword(Old()) == "past_key_values"


def test_hf_engine_passes_the_cache_under_the_name_forward_takes():
    """transformers >= 5.20 renamed `past_key_values` to `cache` (the old name warns); older ones take the old."""
    import inspect

    model = tiny_model(HEAD).eval()
    engine = HFEngine(model, vocab_size=VOCAB)
    expected = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    seen: list[set[str]] = []
    real = model.forward

    def forward(*a: Any, **kw: Any) -> Any:
        seen.append(set(kw))
        return real(*a, **kw)

    model.forward = forward  # type: ignore[method-assign]
    session = engine.start([np.array([3, 4, 5])], SamplingParams(0.0, 1.0, 3))
    tokens, _, _ = session.sample()
    session.advance(tokens, np.ones(1, dtype=bool))
    assert len(seen) == 2 and all(expected in kw and ({"cache", "past_key_values"} - {expected}).isdisjoint(kw)
                                  for kw in seen)
