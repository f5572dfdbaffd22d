"""DEEP-GRPO trainer: local advantages, gradient masking of prefixes, p = 0 equals GRPO, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepgrpo_agent import GRPOTrainer
from deepgrpo_agent.deep_grpo import LOCAL_STREAM, DeepGRPOConfig, DeepGRPOTrainer, Pivot
from deepgrpo_agent.losses import clipped_policy_loss, token_mean
from deepgrpo_agent.rollout import RolloutBatch
from deepgrpo_agent.scoring import pack, token_logprobs
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size


def deep_config(tmp_path, **overrides) -> DeepGRPOConfig:
    base = tiny_config(tmp_path, max_new_tokens=12)
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    fields.update(segment="tokens", segment_tokens=3, branches_per_pivot=4)
    fields.update(overrides)
    return DeepGRPOConfig(**fields)


def fake_branches(rewards: list[float], k: int, truncated: list[bool] | None = None) -> RolloutBatch:
    n = len(rewards)
    ids = [np.array([5, 6], dtype=np.int64)] * n
    return RolloutBatch(
        problem_index=np.zeros(n, dtype=np.int64), problem_id=["p"] * n,
        group=np.repeat(np.arange(n // k), k), prompt_ids=[np.array([3, 4])] * n, prefix_ids=[np.array([7])] * n,
        new_ids=ids, logprobs=[np.zeros(2, np.float32)] * n, entropies=[np.zeros(2, np.float32)] * n,
        rewards=np.array(rewards, dtype=np.float64), correct=np.array([r > 0 for r in rewards], dtype=object),
        grade_status=["ok"] * n, terminated=~np.asarray(truncated or [False] * n, bool),
        truncated=np.asarray(truncated or [False] * n, bool), generated_tokens=2 * n, prefilled_tokens=3,
    )


def test_local_advantages_use_siblings_only(tmp_path):
    trainer = DeepGRPOTrainer(deep_config(tmp_path, branches_per_pivot=2), model=tiny_model(VOCAB))
    pivots = [Pivot(0, 1, 0.5, None), Pivot(1, 2, 0.75, None)]  # type: ignore[arg-type]
    samples, metrics = trainer.local_samples(pivots, fake_branches([1.0, 0.0, 1.0, 1.0], k=2))
    # pivot 0 siblings {1, 0} -> mean 0.5 -> (+0.5, -0.5); pivot 1 siblings {1, 1} -> (0, 0)
    np.testing.assert_allclose(samples.advantages, [0.5, -0.5, 0.0, 0.0])
    assert (samples.streams == LOCAL_STREAM).all()
    np.testing.assert_array_equal(samples.contexts[0], [3, 4, 7])  # prompt + prefix: no loss
    np.testing.assert_array_equal(samples.targets[0], [5, 6])  # only the new suffix
    assert metrics["pivot/unrecoverable_fraction"] == 0.0 and metrics["pivot/branch_success_rate"] == 0.75
    assert list(trainer.phi.buffer) == [(0.5, 1.0), (0.75, 1.0)]


def test_branch_prefix_gets_no_gradient_but_suffix_does():
    model = tiny_model(VOCAB)
    prompt, prefix, suffix = np.array([3, 4, 5]), np.array([6, 7]), np.array([8, 9, 10])
    adv = torch.tensor([0.7])

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    # The trainer's path: context = prompt + prefix (masked), target = suffix.
    batch = pack([np.concatenate([prompt, prefix])], [suffix], torch.device("cpu"))
    logp = token_logprobs(model, batch)
    per_token, _ = clipped_policy_loss(logp, logp.detach(), adv, eps_low=0.2, eps_high=0.2)
    ours = grads(token_mean(per_token, batch.mask))
    # Reference: a full forward pass, loss -A * mean log p over the suffix positions only.
    full = torch.as_tensor(np.concatenate([prompt, prefix, suffix]))[None]
    logits = model(full).logits.log_softmax(-1)[0]
    positions = torch.arange(len(prompt) + len(prefix) - 1, full.shape[1] - 1)
    token_lp = logits[positions, full[0, positions + 1]]
    reference = grads(-(adv * token_lp).mean())
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Had the prefix been trained too, the gradient would differ: masking is what makes them equal.
    with_prefix = torch.arange(len(prompt) - 1, full.shape[1] - 1)
    lp2 = logits.detach().requires_grad_(False)
    assert not torch.allclose(token_lp.mean(), lp2[with_prefix, full[0, with_prefix + 1]].mean())
    assert any(g.abs().sum() > 0 for g in ours)


def test_p_zero_equals_grpo(tmp_path):
    grpo = GRPOTrainer(tiny_config(tmp_path / "a", max_new_tokens=12), model=tiny_model(VOCAB))
    deep = DeepGRPOTrainer(deep_config(tmp_path / "b", pivots_per_trajectory=0, drop_zero_advantage=False),
                           model=tiny_model(VOCAB))
    m1, m2 = grpo.train(), deep.train()
    for p, q in zip(grpo.model.parameters(), deep.model.parameters()):
        assert torch.equal(p, q)
    assert m2["pivot/count"] == 0 and m1["loss/total"] == m2["loss/total"]


def test_end_to_end_step_records_pivots_and_resumes(tmp_path, monkeypatch):
    from deepgrpo_agent.callbacks import Callback

    class Recorder(Callback):
        def __init__(self) -> None:
            self.metrics: list[dict[str, float]] = []

        def on_step_end(self, trainer, step, metrics) -> None:  # type: ignore[no-untyped-def]
            self.metrics.append(dict(metrics))

    recorder = Recorder()
    trainer = DeepGRPOTrainer(deep_config(tmp_path, total_steps=2, save_every=1), model=tiny_model(VOCAB),
                              callbacks=[recorder])
    trained: list = []
    real_update = trainer.update
    monkeypatch.setattr(trainer, "update", lambda s: trained.append(s) or real_update(s))
    metrics = trainer.train()
    steps = recorder.metrics
    assert metrics["pivot/count"] > 0 and metrics["budget/branch_rollouts"] > 0
    # Each step's metrics describe exactly what it trained, and the budget adds them up.
    assert metrics["budget/branch_rollouts"] == 4 * sum(m["pivot/count"] for m in steps)  # K = 4 per pivot
    assert metrics["budget/generated_tokens"] == sum(
        m["rollout/generated_tokens"] + m["pivot/branch_generated_tokens"] for m in steps)
    assert metrics["budget/root_rollouts"] == 2 * 8  # 2 steps x 2 prompts x 4 roots
    for m, samples in zip(steps, trained):
        local = samples.streams == LOCAL_STREAM
        assert m["adv/local_count"] == local.sum() and m["adv/global_count"] == (~local).sum()
        assert (np.abs(samples.advantages) >= 1e-8).all()  # zero-advantage rows were dropped
        if local.any():
            np.testing.assert_allclose(m["adv/local_abs_mean"], np.abs(samples.advantages[local]).mean(), rtol=1e-6)
        assert 0.0 <= m["pivot/unrecoverable_fraction"] <= 1.0 and m["pivot/local_stream_used"] == float(local.any())
    assert metrics["train/trained_tokens"] == sum(len(t) for t in trained[-1].targets)
    resumed = DeepGRPOTrainer(deep_config(tmp_path, total_steps=3, resume=True), model=tiny_model(VOCAB, 5))
    assert resumed.step == 2 and list(resumed.phi.buffer) == list(trainer.phi.buffer)


def test_deep_config_validation(tmp_path):
    with pytest.raises(ValueError, match="branches_per_pivot"):
        DeepGRPOConfig(branches_per_pivot=1)
    with pytest.raises(ValueError, match="pivots_per_trajectory"):
        DeepGRPOConfig(pivots_per_trajectory=-1)
    with pytest.raises(TypeError, match="DeepGRPOConfig"):
        DeepGRPOTrainer(tiny_config(tmp_path), model=tiny_model(VOCAB))  # type: ignore[arg-type]


def test_truncated_branches_score_zero(tmp_path):
    trainer = DeepGRPOTrainer(deep_config(tmp_path), model=tiny_model(VOCAB))
    pivots = [Pivot(0, 1, 0.5, None)]  # type: ignore[arg-type]
    branches = fake_branches([1.0, 0.0, 1.0, 1.0], k=4, truncated=[True, False, False, True])
    samples, metrics = trainer.local_samples(pivots, branches)
    # Truncated rows count as 0: rewards (0, 0, 1, 0), mean 1/4.
    np.testing.assert_allclose(samples.advantages, [-0.25, -0.25, 0.75, -0.25])
    assert metrics["pivot/branch_success_rate"] == 0.25
    off = DeepGRPOTrainer(deep_config(tmp_path / "off", truncated_is_failure=False), model=tiny_model(VOCAB))
    samples, _ = off.local_samples(pivots, branches)  # the env's rewards as they are: mean 3/4
    np.testing.assert_allclose(samples.advantages, [0.25, -0.75, 0.25, 0.25])


def fixed_step(trainer: DeepGRPOTrainer, monkeypatch, root_adv: list[float], branch_rewards: list[float]) -> None:
    """Makes trainer.collect_samples() see fixed roots (advantages given) and fixed branches (K = 4 per pivot)."""
    from deepgrpo_agent.samples import Rollouts
    from deepgrpo_agent.trainer import GRPOTrainer, TrainSamples

    n = len(root_adv)
    roots = TrainSamples([np.array([3, 4])] * n, [np.array([5, 6, 7])] * n, np.array(root_adv, np.float32),
                         np.zeros(n, np.int64))
    pivots = [Pivot(i, 1, 0.5, None) for i in range(len(branch_rewards) // 4)]  # type: ignore[arg-type]
    # GRPO's stages (the parent's) return the fixed roots; DEEP-GRPO's own stages run for real.
    monkeypatch.setattr(GRPOTrainer, "collect", lambda self: Rollouts([None], [None], {}))  # type: ignore[list-item]
    monkeypatch.setattr(GRPOTrainer, "compute_advantages", lambda self, rollouts: (roots, {}))
    monkeypatch.setattr(trainer, "choose_pivots", lambda batch: pivots)
    monkeypatch.setattr(trainer, "expand", lambda p: fake_branches(branch_rewards, k=4))


def test_zero_advantage_rows_are_dropped_from_both_streams(tmp_path, monkeypatch):
    trainer = DeepGRPOTrainer(deep_config(tmp_path), model=tiny_model(VOCAB))
    # Pivot 0's branches are mixed, pivot 1's all fail (advantage 0 everywhere).
    fixed_step(trainer, monkeypatch, [0.5, 0.0, -0.5, 0.0], [1, 0, 1, 1, 0, 0, 0, 0])
    samples, metrics = trainer.collect_samples()
    local = samples.streams == LOCAL_STREAM
    np.testing.assert_allclose(samples.advantages[~local], [0.5, -0.5])
    np.testing.assert_allclose(samples.advantages[local], [0.25, -0.75, 0.25, 0.25])
    assert metrics["adv/local_count"] == 4 and metrics["adv/global_count"] == 2
    assert metrics["pivot/unrecoverable_fraction"] == 0.5
    keep = DeepGRPOTrainer(deep_config(tmp_path / "keep", drop_zero_advantage=False), model=tiny_model(VOCAB))
    fixed_step(keep, monkeypatch, [0.5, 0.0, -0.5, 0.0], [1, 0, 1, 1, 0, 0, 0, 0])
    samples, _ = keep.collect_samples()
    assert (samples.streams == LOCAL_STREAM).sum() == 8 and (samples.streams == 0).sum() == 4


@pytest.mark.parametrize(("minimum", "used"), [(4, True), (5, False)])
def test_min_branch_samples_skips_a_thin_local_stream(tmp_path, monkeypatch, minimum, used):
    trainer = DeepGRPOTrainer(deep_config(tmp_path, min_branch_samples=minimum), model=tiny_model(VOCAB))
    fixed_step(trainer, monkeypatch, [0.5, -0.5], [1, 0, 1, 1, 0, 0, 0, 0])  # 4 branch rows survive the drop
    samples, metrics = trainer.collect_samples()
    assert metrics["pivot/local_stream_used"] == float(used)
    assert (samples.streams == LOCAL_STREAM).sum() == (4 if used else 0) and (samples.streams == 0).sum() == 2


@pytest.mark.parametrize("lam", [0.25, 1.0, 2.0])
def test_local_loss_weight_scales_the_local_stream(tmp_path, lam):
    """L = tokenmean_main(l) + lambda * tokenmean_branch(l); at ratio 1, l = -A on every token."""
    from deepgrpo_agent.trainer import TrainSamples

    trainer = DeepGRPOTrainer(deep_config(tmp_path, local_loss_weight=lam), model=tiny_model(VOCAB))
    samples = TrainSamples(
        contexts=[np.array([3, 4, 5])] * 4, targets=[np.array([6, 7]), np.array([8]), np.array([9, 10, 11]), np.array([12])],
        advantages=np.array([0.5, -0.5, 0.25, -0.5], np.float32), streams=np.array([0, 0, 1, 1]),
    )
    metrics = trainer.update(samples)
    main = -(0.5 * 2 - 0.5 * 1) / 3  # token mean over the 3 global tokens
    local = -(0.25 * 3 - 0.5 * 1) / 4  # and over the 4 local ones (-1/16)
    assert metrics["loss/stream_0"] == pytest.approx(main, abs=1e-6)
    assert metrics["loss/stream_1"] == pytest.approx(local, abs=1e-6)
    assert metrics["loss/total"] == pytest.approx(main + lam * local, abs=1e-6)
    assert trainer.stream_weights() == {0: 1.0, LOCAL_STREAM: lam}
