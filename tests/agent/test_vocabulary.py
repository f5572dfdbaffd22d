"""One vocabulary for sampling, scoring and the reference model when the model's head is padded.

The model here has a 64-row output head and the env 47 token ids (TinyCodec), as a checkpoint whose
embedding matrix is padded past its tokenizer. Before the fix the engine sampled from a softmax over
the first 47 logits while the loss normalized over all 64 (0.29 nats per token apart at T = 1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import GRPOTrainer, update
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.rollout import collect_rollouts
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.scoring import pack, restrict_vocab, token_logprobs
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

ENV_VOCAB = TinyCodec().vocab_size  # 47
HEAD = 64


def test_restrict_vocab_slices_and_checks():
    logits = torch.arange(12.0).reshape(2, 6)
    torch.testing.assert_close(restrict_vocab(logits, 4), logits[:, :4])
    assert restrict_vocab(logits, None) is logits and restrict_vocab(logits, 6) is logits
    with pytest.raises(ValueError, match="output logits"):
        restrict_vocab(logits, 7)
    with pytest.raises(ValueError, match="output logits"):
        restrict_vocab(logits, 0)


def test_token_logprobs_normalize_over_the_action_space_only():
    model = tiny_model(HEAD).eval()
    batch = pack([np.array([3, 4, 5])], [np.array([6, 7])], torch.device("cpu"))
    with torch.no_grad():
        logits = model(torch.tensor([[3, 4, 5, 6, 7]])).logits[0, 2:4]  # (2, 64): predict 6 and 7
        got = token_logprobs(model, batch, 1.4, vocab_size=ENV_VOCAB)[0]
        full = token_logprobs(model, batch, 1.4)[0]
    expected = (logits[:, :ENV_VOCAB] / 1.4).log_softmax(-1)[[0, 1], [6, 7]]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - full).min() > 1e-3  # normalizing over the padded rows too gives smaller log-probs


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.4])
def test_loss_path_scores_the_distribution_the_engine_sampled(tmp_path, monkeypatch, temperature):
    """A sampled token's log-prob from the engine equals the trainer's loss-path (and reference) log-prob."""
    trainer = GRPOTrainer(tiny_config(tmp_path, temperature=temperature, kl_coef=0.1, max_new_tokens=6),
                          model=tiny_model(HEAD))
    assert trainer.vocab_size == ENV_VOCAB == trainer.engine.vocab_size
    problems = trainer.next_problems(2)
    batch = collect_rollouts(trainer.env, trainer.engine, problems, 4, trainer.sampling(),
                             generator=trainer.generator)
    engine_logp = {(tuple(c), tuple(t)): lp for c, t, lp in zip(batch.prompt_ids, batch.new_ids, batch.logprobs)}
    samples = TrainSamples.from_batch(batch, np.zeros(len(batch), dtype=np.float32))
    samples.advantages[:] = 0.5  # every row is scored (none is skipped as a zero-advantage row)
    seen: list[tuple[str, tuple[int, ...], tuple[int, ...], np.ndarray]] = []
    real = update.token_logprobs

    def spy(model: Any, packed: Any, temp: Any = 1.0, **kw: Any) -> torch.Tensor:
        out = real(model, packed, temp, **kw)
        which = "reference" if model is trainer.ref_model else "policy"
        for row in range(packed.targets.shape[0]):
            n = int(packed.mask[row].sum())
            ctx_len = int(packed.gather_pos[row, 0]) + 1
            seen.append((which, tuple(packed.input_ids[row, :ctx_len].tolist()),
                         tuple(packed.targets[row, :n].tolist()), out[row, :n].detach().numpy().copy()))
        return out

    real_shared = update.shared_prefix_logprobs

    def spy_shared(model: Any, contexts: Any, targets: Any, device: Any, temp: Any = 1.0, **kw: Any) -> Any:
        out, mask = real_shared(model, contexts, targets, device, temp, **kw)  # a group's prompt computed once
        which = "reference" if model is trainer.ref_model else "policy"
        for row, (c, t) in enumerate(zip(contexts, targets)):
            seen.append((which, tuple(c.tolist()), tuple(t.tolist()), out[row, : len(t)].detach().numpy().copy()))
        return out, mask

    monkeypatch.setattr(update, "token_logprobs", spy)
    monkeypatch.setattr(update, "shared_prefix_logprobs", spy_shared)
    trainer.update(samples)
    assert {w for w, *_ in seen} == {"policy", "reference"}
    assert sum(len(t) for _, _, t, _ in seen) == 2 * sum(len(t) for t in samples.targets)
    for _, context, target, logp in seen:
        np.testing.assert_allclose(logp, engine_logp[(context, target)], rtol=0, atol=2e-5)


def test_engine_never_samples_a_padded_id_and_matches_the_sliced_softmax():
    model = tiny_model(HEAD).eval()
    with torch.no_grad():  # make the padded rows the most likely ones: they must still never be drawn
        model.lm_head.weight[ENV_VOCAB:] = 5.0 * model.lm_head.weight[:ENV_VOCAB].abs().max()
    engine = HFEngine(model, vocab_size=ENV_VOCAB)
    session = engine.start([np.array([3, 4, 5])], SamplingParams(temperature=1.4, max_new_tokens=3), repeat=64)
    tokens, logp, entropy = session.sample(torch.Generator().manual_seed(0))
    assert tokens.max() < ENV_VOCAB
    with torch.no_grad():
        ref = (model(torch.tensor([[3, 4, 5]])).logits[0, -1, :ENV_VOCAB] / 1.4).log_softmax(-1)
    np.testing.assert_allclose(logp, ref[torch.from_numpy(tokens)].numpy(), atol=1e-5)
    np.testing.assert_allclose(entropy, float(-(ref.exp() * ref).sum()), atol=1e-5)


def test_token_logprobs_are_exactly_zero_on_padding():
    """Ragged rows: padding positions hold 0 (the contract every consumer of the (B, T) tensor relies on)."""
    model = tiny_model(HEAD).eval()
    batch = pack([np.array([3, 4, 5]), np.array([6])], [np.array([7, 8, 9]), np.array([10])], torch.device("cpu"))
    with torch.no_grad():
        logp = token_logprobs(model, batch, vocab_size=ENV_VOCAB)
    assert logp.shape == (2, 3) and bool((logp[0] < 0).all()) and float(logp[1, 0]) < 0
    assert logp[1, 1:].tolist() == [0.0, 0.0]
