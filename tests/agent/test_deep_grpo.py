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


def fake_branches(rewards: list[float], k: int) -> RolloutBatch:
    n = len(rewards)
    ids = [np.array([5, 6], dtype=np.int64)] * n
    return RolloutBatch(
        problem_index=np.zeros(n, dtype=np.int64), problem_id=["p"] * n,
        group=np.repeat(np.arange(n // k), k), prompt_ids=[np.array([3, 4])] * n, prefix_ids=[np.array([7])] * n,
        new_ids=ids, logprobs=[np.zeros(2, np.float32)] * n, entropies=[np.zeros(2, np.float32)] * n,
        rewards=np.array(rewards, dtype=np.float64), correct=np.array([r > 0 for r in rewards], dtype=object),
        grade_status=["ok"] * n, terminated=np.ones(n, bool), truncated=np.zeros(n, bool),
        generated_tokens=2 * n, prefilled_tokens=3,
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


def test_end_to_end_step_records_pivots_and_resumes(tmp_path):
    trainer = DeepGRPOTrainer(deep_config(tmp_path, total_steps=2, save_every=1), model=tiny_model(VOCAB))
    metrics = trainer.train()
    assert metrics["pivot/count"] > 0 and metrics["budget/branch_rollouts"] > 0
    assert metrics["budget/branch_rollouts"] % 4 == 0  # K = 4 per pivot
    for key in ("pivot/branch_success_rate", "pivot/unrecoverable_fraction", "adv/local_count",
                "rollout/entropy", "rollout/response_length", "budget/prefilled_tokens"):
        assert key in metrics
    resumed = DeepGRPOTrainer(deep_config(tmp_path, total_steps=3, resume=True), model=tiny_model(VOCAB, 5))
    assert resumed.step == 2 and list(resumed.phi.buffer) == list(trainer.phi.buffer)


def test_deep_config_validation(tmp_path):
    with pytest.raises(ValueError, match="branches_per_pivot"):
        DeepGRPOConfig(branches_per_pivot=1)
    with pytest.raises(ValueError, match="pivots_per_trajectory"):
        DeepGRPOConfig(pivots_per_trajectory=-1)
    with pytest.raises(TypeError, match="DeepGRPOConfig"):
        DeepGRPOTrainer(tiny_config(tmp_path), model=tiny_model(VOCAB))  # type: ignore[arg-type]
