"""Tests of HFEngine: KV-cache decoding against full forward passes, branching, compaction, sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from deepgrpo_agent.engine.hf import HFEngine, _inverse_cdf
from deepgrpo_agent.engine.protocol import SamplingParams
from tests.agent import tiny

VOCAB = 48  # the "env" action space; the model has 64 logits, so ids 48..63 must never be drawn


def tiny_model(seed: int = 0, dropout: float = 0.0) -> LlamaForCausalLM:
    return tiny.tiny_model(64, seed, max_position_embeddings=128, attention_dropout=dropout).eval()


SEQS = [np.array([3, 4, 5, 6, 7, 8, 9]), np.array([10, 11]), np.array([12, 13, 14, 15])]


def decode(
    engine: HFEngine,
    seqs: list[np.ndarray],
    params: SamplingParams,
    repeat: int = 1,
    seed: int = 0,
    end_at: dict[int, int] | None = None,
) -> tuple[np.ndarray, ...]:
    """Runs a session for max_new_tokens steps; row r ends after end_at[r] tokens. Returns (R, T) arrays."""
    session = engine.start(seqs, params, repeat=repeat)
    generator = torch.Generator().manual_seed(seed)
    active = np.ones(session.num_rows, dtype=bool)
    out: list[tuple[np.ndarray, ...]] = []
    for t in range(params.max_new_tokens):
        out.append(session.sample(generator))
        for row, n in (end_at or {}).items():
            if t + 1 >= n:
                active[row] = False
        if t + 1 < params.max_new_tokens:
            session.advance(out[-1][0], active.copy())
    return tuple(np.stack(x, axis=1) for x in zip(*out))


def reference_logprobs(model: Any, context: np.ndarray, new: np.ndarray, temperature: float) -> tuple:
    """Log-probs and entropies of `new` after `context` from one full forward pass (no cache, no padding)."""
    ids = torch.from_numpy(np.concatenate([context, new]))[None]
    with torch.no_grad():
        logits = model(ids).logits[0, len(context) - 1 : -1, :VOCAB] / temperature
    logp = logits.log_softmax(-1)
    chosen = logp.gather(1, torch.from_numpy(new)[:, None])[:, 0]
    return chosen.numpy(), -(logp.exp() * logp).sum(-1).numpy()


def test_kv_cache_logprobs_match_full_forward_with_padding_and_repeat():
    model = tiny_model()
    engine = HFEngine(model, vocab_size=VOCAB)
    params = SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=10)
    tokens, logprobs, entropies = decode(engine, SEQS, params, repeat=2, end_at={1: 4, 4: 7})
    assert tokens.max() < VOCAB
    for row in range(6):
        n = {1: 4, 4: 7}.get(row, 10)
        ref_lp, ref_ent = reference_logprobs(model, SEQS[row // 2], tokens[row, :n], 0.8)
        np.testing.assert_allclose(logprobs[row, :n], ref_lp, atol=1e-4)
        np.testing.assert_allclose(entropies[row, :n], ref_ent, atol=1e-4)
        assert (tokens[row, n:] == 0).all() and (logprobs[row, n:] == 0).all()


def test_greedy_equals_the_models_own_argmax_continuation():
    model = tiny_model(1)
    engine = HFEngine(model, vocab_size=VOCAB)
    tokens, logprobs, _ = decode(engine, SEQS, SamplingParams(temperature=0.0, max_new_tokens=8))
    for row, seq in enumerate(SEQS):
        ids = list(seq)
        with torch.no_grad():
            for _ in range(8):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1, :VOCAB].argmax()))
        np.testing.assert_array_equal(tokens[row], ids[len(seq) :])
        ref_lp, _ = reference_logprobs(model, seq, tokens[row], 1.0)  # greedy reports T=1 log-probs
        np.testing.assert_allclose(logprobs[row], ref_lp, atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "mistral-sliding-window"])
def test_other_architectures_and_cache_layouts_decode_exactly(arch):
    """Learned positions (GPT-2) and sliding-window layers (kept as transformers' own cache layers)."""
    from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    if arch == "gpt2":
        config: Any = GPT2Config(
            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1
        )
        model: Any = GPT2LMHeadModel(config).eval()
    else:
        config = MistralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=4,
        )
        model = MistralForCausalLM(config).eval()
    engine = HFEngine(model, vocab_size=VOCAB)
    tokens, logprobs, _ = decode(engine, SEQS, SamplingParams(max_new_tokens=8), repeat=2, end_at={3: 5})
    for row in range(6):
        n = 5 if row == 3 else 8
        ref_lp, _ = reference_logprobs(model, SEQS[row // 2], tokens[row, :n], 1.0)
        np.testing.assert_allclose(logprobs[row, :n], ref_lp, atol=1e-4)


class ForwardCounter:
    """Wraps model.forward to record (batch, length) of every call."""

    def __init__(self, model: Any) -> None:
        self.shapes: list[tuple[int, int]] = []
        inner = model.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
            self.shapes.append(tuple(ids.shape))
            return inner(*args, **kwargs)

        model.forward = forward


def test_repeat_prefills_each_sequence_once_and_expands_the_cache():
    model = tiny_model()
    counter = ForwardCounter(model)
    engine = HFEngine(model, vocab_size=VOCAB)
    params = SamplingParams(max_new_tokens=5)
    tokens, logprobs, _ = decode(engine, SEQS, params, repeat=4)
    prefills = [s for s in counter.shapes if s[1] > 1]
    assert prefills == [(3, 7)]
    assert [s for s in counter.shapes if s[1] == 1] == [(12, 1)] * 4
    assert tokens.shape == (12, 5)
    # Copies of one sequence share the prefix but draw their own tokens.
    assert len({tuple(t) for t in tokens[:4]}) > 1
    for row in (0, 5, 11):
        ref_lp, _ = reference_logprobs(model, SEQS[row // 4], tokens[row], 1.0)
        np.testing.assert_allclose(logprobs[row], ref_lp, atol=1e-4)


def test_compaction_shrinks_the_batch_and_changes_no_result():
    params = SamplingParams(temperature=1.0, max_new_tokens=9)
    ends = {0: 2, 2: 3, 3: 3, 5: 6}
    results, decode_batches = [], []
    for threshold in (0.0, None):
        model = tiny_model(2)
        counter = ForwardCounter(model)
        engine = HFEngine(model, vocab_size=VOCAB, compact_threshold=threshold)
        results.append(decode(engine, SEQS, params, repeat=2, seed=7, end_at=ends))
        decode_batches.append([s[0] for s in counter.shapes if s[1] == 1])
    assert decode_batches[1] == [6] * 8
    assert decode_batches[0] == [6, 5, 3, 3, 3, 2, 2, 2]
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    np.testing.assert_allclose(results[0][2], results[1][2], atol=1e-5)


def test_seeded_sampling_is_reproducible_and_stays_in_the_action_space():
    engine = HFEngine(tiny_model(), vocab_size=VOCAB)
    params = SamplingParams(temperature=1.5, max_new_tokens=12)
    a = decode(engine, SEQS, params, repeat=3, seed=3)[0]
    b = decode(engine, SEQS, params, repeat=3, seed=3)[0]
    c = decode(engine, SEQS, params, repeat=3, seed=4)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.max() < VOCAB and c.max() < VOCAB


def test_tiny_top_p_is_greedy():
    engine = HFEngine(tiny_model(), vocab_size=VOCAB)
    greedy = decode(engine, SEQS, SamplingParams(temperature=0.0, max_new_tokens=6))
    nucleus = decode(engine, SEQS, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=6))
    np.testing.assert_array_equal(greedy[0], nucleus[0])
    np.testing.assert_allclose(greedy[1], nucleus[1], atol=1e-5)  # T = 1 in both: same log-probs


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_inverse_cdf_sampler_hits_each_token_with_its_probability(top_p):
    probs = torch.tensor([[0.5, 0.0, 0.3, 0.15, 0.05]])
    n = 20_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a perfect uniform grid
    tokens = _inverse_cdf(probs.expand(n, -1), u, top_p)
    freq = torch.bincount(tokens, minlength=5).double() / n
    kept = probs[0] if top_p == 1.0 else torch.tensor([0.5, 0.0, 0.3, 0.0, 0.0])  # 0.5 < 0.7 <= 0.8
    np.testing.assert_allclose(freq.numpy(), (kept / kept.sum()).double().numpy(), atol=1e-3)


def test_training_mode_model_decodes_in_eval_mode_and_keeps_its_modes():
    model = tiny_model(dropout=0.5)
    engine = HFEngine(model, vocab_size=VOCAB)
    params = SamplingParams(temperature=0.0, max_new_tokens=4)
    expected = decode(engine, SEQS, params)[0]
    model.train()
    model.model.layers[0].eval()  # a mixed mode that must survive
    np.testing.assert_array_equal(decode(engine, SEQS, params)[0], expected)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training


def test_sync_weights_copies_another_module_and_ignores_its_own():
    engine = HFEngine(tiny_model(0), vocab_size=VOCAB)
    params = SamplingParams(temperature=0.0, max_new_tokens=6)
    before = decode(engine, SEQS, params)[0]
    engine.sync_weights(engine.model)
    np.testing.assert_array_equal(decode(engine, SEQS, params)[0], before)
    other = tiny_model(5)
    engine.sync_weights(other)
    np.testing.assert_array_equal(
        decode(engine, SEQS, params)[0], decode(HFEngine(other, vocab_size=VOCAB), SEQS, params)[0]
    )


def test_invalid_inputs_raise_clear_errors():
    engine = HFEngine(tiny_model(), vocab_size=VOCAB)
    params = SamplingParams(max_new_tokens=2)
    with pytest.raises(ValueError, match="repeat"):
        engine.start(SEQS, params, repeat=0)
    with pytest.raises(ValueError, match="non-empty"):
        engine.start([np.array([], dtype=np.int64)], params)
    with pytest.raises(ValueError, match="vocab_size"):
        HFEngine(tiny_model(), vocab_size=65)
    session = engine.start(SEQS, params)
    tokens, _, _ = session.sample()
    session.advance(tokens, np.array([True, False, True]))
    with pytest.raises(ValueError, match="cannot be made active"):
        session.advance(tokens, np.ones(3, dtype=bool))
    session.advance(tokens, np.array([True, False, True]))
    with pytest.raises(RuntimeError, match="max_new_tokens"):
        session.advance(tokens, np.array([True, False, True]))


def test_prefill_runs_the_head_on_one_contiguous_position_per_row():
    # torch's CPU bf16 linear on a strided (B, 1, H) view copies the weight once per row (11 GB for a
    # 200-row SmolLM2 prefill, docs/main_job.md): the head must see a contiguous last-position input.
    model = tiny_model()
    engine = HFEngine(model, vocab_size=VOCAB, dtype=torch.bfloat16)
    seen: list[tuple[tuple[int, ...], bool]] = []
    hook = engine.model.lm_head.register_forward_hook(
        lambda m, args, out: seen.append((tuple(args[0].shape), args[0].is_contiguous())))
    try:
        session = engine.start(SEQS, SamplingParams(0.0, 1.0, 2), repeat=2)
        tokens, _, _ = session.sample(None)
    finally:
        hook.remove()
    assert seen == [((len(SEQS), 1, 32), True)]
    # and the logits are still those of each row's last real token (left padding): greedy = argmax of a full forward
    with torch.no_grad():
        expected = [int(engine.model(torch.as_tensor(s)[None]).logits[0, -1, :VOCAB].float().argmax()) for s in SEQS]
    assert tokens.tolist() == np.repeat(expected, 2).tolist()
