"""GRPOTrainer: smoke run, exact resume, micro-batch equivalence, KL, dynamic sampling, bad configs."""

from __future__ import annotations

import json

import pytest
import torch

from deepgrpo_agent import GRPOTrainer
from tests.agent.tiny import tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size


def trainer_for(tmp_path, model_seed=0, **overrides) -> GRPOTrainer:
    return GRPOTrainer(tiny_config(tmp_path, **overrides), model=tiny_model(VOCAB, model_seed))


def test_smoke_loss_finite_and_every_parameter_changes(tmp_path):
    trainer = trainer_for(tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics = trainer.train()
    assert torch.isfinite(torch.tensor(metrics["loss/total"]))
    unchanged = [n for n, p in trainer.model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert metrics["budget/root_rollouts"] == 8 and metrics["budget/generated_tokens"] > 0
    assert 0.0 <= metrics["rollout/zero_variance_fraction"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 1 and "rollout/reward_mean" in lines[-1]


def test_resume_gives_the_same_next_step(tmp_path):
    straight = trainer_for(tmp_path / "a", total_steps=3)
    straight.train()
    first = trainer_for(tmp_path / "b", total_steps=2, save_every=1)
    first.train()
    resumed = trainer_for(tmp_path / "b", model_seed=123, total_steps=3, resume=True)  # other init: overwritten
    assert resumed.step == 2
    resumed.train()
    for (name, p), q in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name
    assert straight.budget == resumed.budget


def plain_sgd(trainer: GRPOTrainer) -> None:
    """SGD at lr 1: the parameter change is the accumulated gradient, so two updates can be compared
    at float tolerance (AdamW's first step is ~lr * sign(grad), which blows float noise on a
    near-zero gradient up to an lr-sized difference)."""
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)


def test_micro_batching_does_not_change_the_update(tmp_path):
    trainers = [trainer_for(tmp_path / "a", micro_batch_size=8), trainer_for(tmp_path / "b", micro_batch_size=1)]
    for t in trainers:
        plain_sgd(t)
        t.train()
    whole, split = trainers
    for p, q in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def fixed_samples():
    import numpy as np

    from deepgrpo_agent.trainer import TrainSamples

    rng = np.random.default_rng(1)
    return TrainSamples(
        contexts=[rng.integers(2, VOCAB, size=4) for _ in range(4)],
        targets=[rng.integers(2, VOCAB, size=n) for n in (3, 1, 2, 4)],
        advantages=np.array([0.5, -1.0, 0.25, -0.5], dtype=np.float32),
        streams=np.zeros(4, dtype=np.int64),
    )


def direct_logprobs(model, samples) -> list[torch.Tensor]:
    """log pi(target_t | context, target_<t) of every row from one plain forward pass each (the reference)."""
    import numpy as np

    out = []
    with torch.no_grad():
        for c, t in zip(samples.contexts, samples.targets):
            ids = torch.from_numpy(np.concatenate([c, t]))[None]
            logp = model(ids).logits[0, len(c) - 1 : -1].float().log_softmax(-1)
            out.append(logp.gather(1, torch.from_numpy(t)[:, None])[:, 0])
    return out


@pytest.mark.parametrize(("aggregation", "expected"), [
    # At ratio 1 every token's loss is -A; lengths (3, 1, 2, 4), advantages (0.5, -1, 0.25, -0.5).
    ("token-mean", -(0.5 * 3 - 1.0 * 1 + 0.25 * 2 - 0.5 * 4) / 10),
    ("sequence-mean", -(0.5 - 1.0 + 0.25 - 0.5) / 4),
    ("dr-grpo", -(0.5 * 3 - 1.0 * 1 + 0.25 * 2 - 0.5 * 4) / (4 * 8)),  # B x max_new_tokens
])
def test_aggregations_against_hand_computed_losses(tmp_path, aggregation, expected):

    trainer = trainer_for(tmp_path, loss_aggregation=aggregation)
    metrics = trainer.update(fixed_samples())
    assert metrics["loss/total"] == pytest.approx(expected, abs=1e-6)
    assert metrics["loss/clip_fraction"] == 0.0 and metrics["train/trained_tokens"] == 10


def test_second_epoch_is_clipped_as_the_formula_says(tmp_path, monkeypatch):
    """ppo_epochs = 2: the second epoch's loss and clip fraction against the clipped surrogate by hand."""
    from deepgrpo_agent import update

    trainer = trainer_for(tmp_path, ppo_epochs=2, learning_rate=0.05, clip_eps_low=0.1, clip_eps_high=0.1)
    samples = fixed_samples()
    old = direct_logprobs(trainer.model, samples)
    seen: list[torch.Tensor] = []  # the log-probs each epoch scored (epoch 2: after the first step)
    real = update.clipped_policy_loss
    monkeypatch.setattr(update, "clipped_policy_loss",
                        lambda logp, o, a, **kw: seen.append(logp.detach()) or real(logp, o, a, **kw))
    metrics = trainer.update(samples)  # the returned metrics are the last epoch's
    assert len(seen) == 2  # one micro-batch per epoch
    order = update.micro_batches(4, 8, [len(c) + len(t) for c, t in zip(samples.contexts, samples.targets)])[0]
    total, clipped, tokens = 0.0, 0, 0
    for r, i in enumerate(order):
        n = len(samples.targets[i])
        rho = torch.exp(seen[1][r, :n] - old[i])
        a = float(samples.advantages[i])
        loss = torch.maximum(-a * rho, -a * rho.clamp(0.9, 1.1))
        total += float(loss.sum())
        clipped += int((((a > 0) & (rho > 1.1)) | ((a < 0) & (rho < 0.9))).sum())
        tokens += n
    assert metrics["loss/total"] == pytest.approx(total / tokens, abs=1e-5)
    assert metrics["loss/clip_fraction"] == pytest.approx(clipped / tokens, abs=1e-6)
    assert 0 < clipped < tokens  # the learning rate is set so that some tokens are clipped, not all


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_kl_to_frozen_reference_enters_the_loss_with_its_coefficient(tmp_path, beta):
    """L = tokenmean(-A + beta * k3) at ratio 1, with k3 = exp(ref - logp) - (ref - logp) - 1 by hand."""

    trainer = trainer_for(tmp_path, kl_coef=beta)
    with torch.no_grad():  # move the policy away from the reference so that the KL is not 0
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    samples = fixed_samples()
    logp, ref = direct_logprobs(trainer.model, samples), direct_logprobs(trainer.ref_model, samples)
    k3 = [torch.exp(r - lp) - (r - lp) - 1 for lp, r in zip(logp, ref)]
    kl_sum = float(sum(k.sum() for k in k3))
    pg_sum = -float(sum(a * len(t) for a, t in zip(samples.advantages, samples.targets)))
    ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    metrics = trainer.update(samples)
    assert kl_sum > 1e-3
    assert metrics["loss/kl"] == pytest.approx(kl_sum / 10, rel=1e-4)
    assert metrics["loss/total"] == pytest.approx((pg_sum + beta * kl_sum) / 10, rel=1e-4, abs=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(ref_before, trainer.ref_model.parameters()))


def test_kl_run_keeps_the_reference_frozen(tmp_path):
    trainer = trainer_for(tmp_path, kl_coef=0.1, total_steps=2)
    ref_before = [p.detach().clone() for p in trainer.ref_model.parameters()]
    trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(ref_before, trainer.ref_model.parameters()))


@pytest.mark.parametrize("mode", ["drop", "refill"])
def test_dynamic_sampling_with_zero_variance_groups(tmp_path, mode):
    from tests.agent.tiny import always_one

    cfg = tiny_config(tmp_path, dynamic_sampling=mode, max_refill_rounds=2)
    cfg.env_kwargs["verifier"] = always_one
    trainer = GRPOTrainer(cfg, model=tiny_model(VOCAB))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train()
    assert metrics["rollout/zero_variance_fraction"] == 1.0 and metrics["rollout/all_correct_fraction"] == 1.0
    rounds = 3 if mode == "refill" else 1
    assert metrics["rollout/refill_rounds"] == rounds - 1
    assert metrics["budget/root_rollouts"] == 8 * rounds
    assert metrics["train/skipped_update"] == 1.0  # nothing with signal was left to train on
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_bad_configs_give_clear_errors(tmp_path):
    from deepgrpo_agent.config import GRPOConfig

    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ValueError, match=r"Did you mean"):
        GRPOTrainer(tiny_config(tmp_path, env_id="MathReasoning-SVAMPP-v0"), model=tiny_model(VOCAB))
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        GRPOTrainer(tiny_config(tmp_path, model=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("aggregation", ["token-mean", "sequence-mean"])
def test_skipping_zero_advantage_rows_is_exact(tmp_path, aggregation):
    import numpy as np

    from deepgrpo_agent.trainer import TrainSamples

    rng = np.random.default_rng(0)
    samples = TrainSamples(
        contexts=[rng.integers(2, VOCAB, size=5) for _ in range(6)],
        targets=[rng.integers(2, VOCAB, size=n) for n in (3, 4, 2, 5, 1, 3)],
        advantages=np.array([0.5, 0.0, -0.5, 0.0, 0.0, 1.0], dtype=np.float32),
        streams=np.zeros(6, dtype=np.int64),
    )
    results = []
    for skip in (True, False):
        trainer = trainer_for(tmp_path / str(skip), loss_aggregation=aggregation, micro_batch_size=2,
                              skip_zero_advantage_rows=skip)
        plain_sgd(trainer)
        trainer.update(samples)
        results.append([p.detach().clone() for p in trainer.model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # summation order differs


def test_random_tiny_model_is_sized_to_the_env(tmp_path):
    from deepgrpo_agent import GRPOConfig
    from deepgrpo_env.arithmetic import CharCodec

    config = GRPOConfig(env_id="Arithmetic-v0", model="random-tiny", env_kwargs={"level": 1},
                        prompts_per_step=2, group_size=2, max_new_tokens=8, total_steps=1, eval_every=0,
                        save_every=0, tensorboard=False, progress=False, output_dir=str(tmp_path))
    trainer = GRPOTrainer(config)
    assert trainer.model.get_input_embeddings().weight.shape[0] == CharCodec().vocab_size
    assert torch.isfinite(torch.tensor(trainer.train()["loss/total"]))


def test_held_out_split_is_a_fixed_random_subset_disjoint_from_training(tmp_path):
    from deepgrpo_agent.env_pool import split_problems

    same = {"eval_env_id": "MathReasoning-v0", "eval_problems": 4}  # hold out problems of the training env
    a = trainer_for(tmp_path / "a", **same)
    b = trainer_for(tmp_path / "b", seed=7, **same)  # the split does not depend on the run seed
    n = int(a.env.num_problems)
    held, train = a.eval_indices.tolist(), a.train_indices.tolist()
    assert held == b.eval_indices.tolist() and train == b.train_indices.tolist()
    assert held != list(range(n - 4, n))  # not the tail of the file
    assert not set(held) & set(train) and sorted(held + train) == list(range(n))
    drawn = set(a.next_problems(3 * n).tolist())
    assert drawn == set(train)  # training visits every training problem and never a held-out one
    assert set(split_problems(n, 2)[0].tolist()) <= set(held)  # fewer held out: a subset of them


def test_train_problems_limits_training_to_a_pool_revisited_in_epochs(tmp_path):
    trainer = trainer_for(tmp_path, train_problems=5)
    pool = trainer.train_indices
    assert pool is not None and len(pool) == 5
    drawn = trainer.next_problems(10)
    assert sorted(drawn.tolist()) == sorted(pool.tolist() * 2)  # two epochs over the 5-problem pool
    assert sorted(drawn[:5].tolist()) == pool.tolist()  # each epoch visits every pool problem once
    with pytest.raises(ValueError, match="train_problems"):
        trainer_for(tmp_path, train_problems=2, prompts_per_step=4)
