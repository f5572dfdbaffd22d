"""Mixed precision (docs/precision.md): dtype="auto" resolution, fp32 master weights, bf16 rollouts,
the exact on-policy ratio under autocast, the bf16 log-prob error bound, and learning in bf16."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import GRPOConfig, GRPOTrainer, update
from deepgrpo_agent import precision as prec
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.policy import model_precision
from deepgrpo_agent.precision import Precision, resolve_precision
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.scoring import pack, token_logprobs
from deepgrpo_env.arithmetic import CharCodec
from tests.agent.test_learning import Recorder, rewards, settings
from tests.agent.tiny import tiny_config, tiny_model

VOCAB = 48
CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch: pytest.MonkeyPatch) -> Any:
    def set_to(value: bool) -> None:
        monkeypatch.setenv("DEEPGRPO_CPU_BF16", "1" if value else "0")
        prec.cpu_has_native_bf16.cache_clear()

    yield set_to
    prec.cpu_has_native_bf16.cache_clear()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "amx_tile", "fpu"} <= prec.cpu_flags(info)
    assert prec.cpu_flags(tmp_path / "missing") == frozenset()


def test_auto_is_mixed_bf16_on_a_native_bf16_cpu_and_fp32_elsewhere(native_bf16):
    native_bf16(True)
    p = resolve_precision("auto", CPU, num_params=135_000_000)
    assert (p.param_dtype, p.compute_dtype, p.mixed) == (torch.float32, torch.bfloat16, True)
    # Tiny models stay fp32: casts would cost more than the matmuls save.
    assert resolve_precision("auto", CPU, num_params=50_000).compute_dtype == torch.float32
    native_bf16(False)
    p = resolve_precision("auto", CPU, num_params=135_000_000)
    assert (p.param_dtype, p.compute_dtype, p.mixed) == (torch.float32, torch.float32, False)
    # CUDA always has bf16; an explicit choice is honoured everywhere.
    assert resolve_precision("auto", torch.device("cuda"), 135_000_000).compute_dtype == torch.bfloat16
    assert resolve_precision("bf16", CPU).param_dtype == torch.float32  # master weights stay fp32
    assert resolve_precision("float32", CPU).mixed is False
    with pytest.raises(ValueError, match="Expected dtype in"):
        resolve_precision("int8", CPU)


def test_bad_override_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("DEEPGRPO_CPU_BF16", "yes")
    prec.cpu_has_native_bf16.cache_clear()
    try:
        with pytest.raises(ValueError, match="DEEPGRPO_CPU_BF16=0 or 1"):
            prec.cpu_has_native_bf16()
    finally:
        prec.cpu_has_native_bf16.cache_clear()


def test_model_precision_keeps_a_user_bf16_model_pure():
    model = tiny_model(VOCAB).to(torch.bfloat16)
    p = model_precision(model, "bfloat16", CPU)
    assert (p.param_dtype, p.compute_dtype, p.mixed) == (torch.bfloat16, torch.bfloat16, False)


def test_bf16_trainer_keeps_fp32_master_weights_and_syncs_a_bf16_rollout_copy(tmp_path):
    trainer = GRPOTrainer(tiny_config(tmp_path, dtype="bfloat16"), model=tiny_model(VOCAB))
    assert trainer.precision == Precision(torch.float32, torch.bfloat16, "cpu")
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.engine.model is not trainer.model
    assert all(p.dtype == torch.bfloat16 for p in trainer.engine.model.parameters())
    trainer.train_step()
    state = trainer.optimizer.state
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    # After the update the rollout copy holds the new weights, cast to bf16.
    for (name, p), q in zip(trainer.model.named_parameters(), trainer.engine.model.parameters()):
        torch.testing.assert_close(q, p.detach().to(torch.bfloat16), rtol=0, atol=0, msg=name)


def test_fp32_trainer_generates_with_the_training_model_itself(tmp_path):
    trainer = GRPOTrainer(tiny_config(tmp_path, dtype="float32"), model=tiny_model(VOCAB))
    assert trainer.engine.model is trainer.model and not trainer.precision.mixed


def test_engine_dtype_copy_matches_a_bf16_model_and_rejects_a_bad_dtype():
    model = tiny_model(VOCAB).eval()
    engine = HFEngine(model, vocab_size=VOCAB, dtype=torch.bfloat16)
    reference = HFEngine(tiny_model(VOCAB).to(torch.bfloat16).eval(), vocab_size=VOCAB)
    seqs = [np.array([3, 4, 5, 6]), np.array([7, 8])]
    a = engine.start(seqs, SamplingParams(0.0, 1.0, 4)).sample()
    b = reference.start(seqs, SamplingParams(0.0, 1.0, 4)).sample()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"floating torch\.dtype"):
        HFEngine(model, dtype=torch.int64)


def _samples(rng: np.random.Generator, n: int = 4) -> TrainSamples:
    return TrainSamples(
        contexts=[rng.integers(2, VOCAB, size=5) for _ in range(n)],
        targets=[rng.integers(2, VOCAB, size=k) for k in (3, 4, 2, 5)[:n]],
        advantages=np.array([0.5, -0.5, 1.0, -1.0], dtype=np.float32)[:n],
        streams=np.zeros(n, dtype=np.int64),
    )


def test_on_policy_ratio_is_exactly_one_under_bf16_autocast(tmp_path, monkeypatch):
    """Old log-probs (no-grad pass) and the first epoch's log-probs (grad pass) agree bitwise in bf16."""
    config = tiny_config(tmp_path, dtype="bfloat16", ppo_epochs=2, micro_batch_size=2)
    trainer = GRPOTrainer(config, model=tiny_model(VOCAB, hidden=64))
    assert trainer.precision.mixed
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = update.clipped_policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, **kw: Any) -> Any:
        calls.append((logp.detach().clone(), old.clone()))
        return real(logp, old, adv, **kw)

    monkeypatch.setattr(update, "clipped_policy_loss", spy)
    update.policy_update(trainer.model, trainer.optimizer, trainer.scheduler, _samples(np.random.default_rng(0)),
                         trainer.update_settings, stream_weights=trainer.stream_weights(),
                         device=trainer.device, vocab_size=trainer.vocab_size, precision=trainer.precision)
    first_epoch = calls[: len(calls) // 2]
    assert first_epoch and all(logp.dtype == torch.float32 for logp, _ in first_epoch)
    for logp, old in first_epoch:
        torch.testing.assert_close(logp, old, rtol=0, atol=0)  # ratio exactly 1
    # The autocast path really is bf16: it differs from the fp32 path (else this test proves nothing).
    s = _samples(np.random.default_rng(0))
    batch = pack(s.contexts, s.targets, CPU)
    with torch.no_grad():
        fp32 = token_logprobs(trainer.model, batch)
        with trainer.precision.autocast():
            bf16 = token_logprobs(trainer.model, batch)
    assert not torch.equal(fp32, bf16)


BF16_LOGPROB_BOUND = 0.02
"""Max per-token |log-prob(bf16 autocast) - log-prob(fp32)| allowed on the test model (nats).

Measured when written on this random-init Llama (hidden 128, 4 layers, vocab 512, 8 rows x 12 target
tokens): max 0.0039, mean 0.0011 (bf16 keeps 8 mantissa bits: relative rounding 2^-9 per matmul input).
SmolLM2-135M's error, measured for docs/precision.md, is larger because its logits are larger."""


def test_bf16_logprob_error_vs_fp32_is_within_the_stated_bound():
    model = tiny_model(512, hidden=128, layers=4).eval()
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, 512, size=12) for _ in range(8)]
    targets = [rng.integers(0, 512, size=12) for _ in range(8)]
    batch = pack(contexts, targets, CPU)
    with torch.no_grad():
        fp32 = token_logprobs(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logprobs(model, batch)
    assert bf16.dtype == torch.float32
    err = (bf16 - fp32)[batch.mask].abs()
    assert 0 < float(err.max()) < BF16_LOGPROB_BOUND


def test_grpo_reward_rises_on_arithmetic_in_bf16(tmp_path):
    """The learning test of test_learning.py, trained under bf16 autocast with bf16 rollouts."""
    recorder = Recorder()
    config = GRPOConfig(**{**settings(tmp_path), "dtype": "bfloat16"})
    trainer = GRPOTrainer(config, model=tiny_model(CharCodec().vocab_size), callbacks=[recorder])
    assert trainer.precision.mixed
    trainer.train()
    r = rewards(recorder)
    assert r[:3].mean() < 0.12
    assert r[-10:].mean() > r[:10].mean() + 0.15 and r[-10:].mean() > 0.25
