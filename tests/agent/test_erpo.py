"""ERPO: the temperature schedule, the pseudo-advantage, per-row temperatures end to end, checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import update
from deepgrpo_agent.engine.hf import HFEngine
from deepgrpo_agent.engine.protocol import SamplingParams
from deepgrpo_agent.erpo import (
    DeepERPOConfig,
    DeepERPOTrainer,
    ERPOConfig,
    ERPOTrainer,
    TemperatureTracker,
    pseudo_advantages,
)
from deepgrpo_agent.scoring import pack
from deepgrpo_agent.trainer import TrainSamples
from tests.agent.tiny import always_one, tiny_config, tiny_model
from tests.helpers import TinyCodec

VOCAB = TinyCodec().vocab_size
C, M, W, U = [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [float("nan"), float("nan")]  # one visit's rewards


def erpo_config(tmp_path: Any, cls: type = ERPOConfig, **overrides: Any) -> Any:
    base = tiny_config(tmp_path, max_new_tokens=12)
    fields = {f: getattr(base, f) for f in base.__dataclass_fields__}
    if cls is DeepERPOConfig:
        fields.update(segment="tokens", segment_tokens=3, branches_per_pivot=2)
    fields.update(overrides)
    return cls(**fields)


@pytest.mark.parametrize("reset, expected", [
    # levels: C1 C2 C3 C3(cap) M2 C3 W2 W1 U1(unchanged) C2
    ("decay", [1.0, 1.1, 1.2, 1.25, 1.25, 1.2, 1.25, 1.2, 1.1, 1.1, 1.2]),
    # levels: C1 C2 C3 C3 M0 C1 W0 W0 U0 C1
    ("base", [1.0, 1.1, 1.2, 1.25, 1.25, 1.0, 1.1, 1.0, 1.0, 1.0, 1.1]),
])
def test_temperature_schedule_and_reset_rule(reset, expected):
    tracker = TemperatureTracker(1.0, 0.1, 1.25, reset=reset, history=3)  # cap between two steps
    seen = []
    for rewards in (C, C, C, C, M, C, W, W, U, C):
        seen.append(tracker.temperature("p"))
        tracker.update("p", rewards)
        assert tracker.temperature("other") == 1.0  # prompts are independent
    seen.append(tracker.temperature("p"))
    np.testing.assert_allclose(seen, expected, rtol=0, atol=1e-12)
    assert tracker.history("p") == ("all-wrong", "unscorable", "all-correct")  # the last 3 only
    assert tracker.raised_prompts == 1 and len(tracker) == 1


def test_tracker_state_round_trip():
    tracker = TemperatureTracker(0.8, 0.2, 1.6, history=2)
    for pid, visits in {"a": [C, C], "b": [C, M], "c": [W]}.items():
        for rewards in visits:
            tracker.update(pid, rewards)
    clone = TemperatureTracker(0.8, 0.2, 1.6, history=2)
    clone.load_state_dict(tracker.state_dict())
    for pid in "abcz":
        assert clone.temperature(pid) == tracker.temperature(pid)
        assert clone.history(pid) == tracker.history(pid)
    assert clone.temperature("a") == pytest.approx(1.2) and clone.temperature("b") == 0.8
    clone.update("a", C)
    assert clone.history("a") == ("all-correct", "all-correct")  # maxlen survives the round trip


def test_pseudo_advantage_against_hand_computed_values():
    nan = float("nan")
    rewards = np.array([1, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 1, nan, 1, 1])
    groups = np.repeat(np.arange(4), 4)
    advantages = np.array([0, 0, 0, 0, 0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    zero_var = np.repeat([True, False, True, True], 4)
    adv, given = pseudo_advantages(advantages, rewards, groups, zero_var, 0.1)
    expected = [-0.1] * 4 + [0.5, -0.5, 0.5, -0.5] + [0.0] * 4 + [-0.1, 0.0, -0.1, -0.1]
    np.testing.assert_allclose(adv, expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(given, np.abs(np.array(expected) + 0.1) < 1e-7)
    off, none = pseudo_advantages(advantages, rewards, groups, zero_var, 0.0)
    np.testing.assert_array_equal(off, advantages)
    assert not none.any()


def test_all_correct_prompts_get_the_pseudo_advantage_then_a_raised_temperature(tmp_path, monkeypatch):
    config = erpo_config(tmp_path, erpo_pseudo_advantage=0.05, erpo_temperature_step=0.25,
                         dynamic_sampling="drop",
                         env_kwargs={**tiny_config(tmp_path).env_kwargs, "verifier": always_one})
    trainer = ERPOTrainer(config, model=tiny_model(VOCAB))
    first = trainer.next_problems(2)
    monkeypatch.setattr(trainer, "next_problems", lambda count: first[:count])
    samples, metrics = trainer.collect_samples()
    assert len(samples) == 8  # nothing dropped: every group is all-correct and carries -eps
    np.testing.assert_allclose(samples.advantages, -0.05)
    np.testing.assert_allclose(samples.temperatures, 1.0)
    assert metrics["erpo/all_correct_fraction"] == 1.0 and metrics["erpo/raised_prompts"] == 2
    # Both prompts were all-correct: their next visit is sampled, and scored, one step hotter.
    np.testing.assert_allclose(trainer.root_temperatures(first), [1.25, 1.25])
    samples, metrics = trainer.collect_samples()
    np.testing.assert_allclose(samples.temperatures, 1.25)
    assert metrics["erpo/raised_groups"] == 2 and metrics["erpo/temperature_mean"] == 1.25
    assert metrics["erpo/revived_fraction"] == 0.0 and metrics["erpo/temperature_hist_2"] == 1.0  # [1.2, 1.3)


def test_engine_samples_each_row_at_its_own_temperature():
    model = tiny_model(64, max_position_embeddings=128).eval()
    engine = HFEngine(model, vocab_size=48)
    seqs = [np.array([3, 4, 5, 6]), np.array([7, 8])]
    temps = [0.5, 1.0, 1.5, 2.5]  # rows: seq 0 twice, seq 1 twice
    session = engine.start(seqs, SamplingParams(temperature=1.0, max_new_tokens=4), repeat=2,
                           temperatures=temps)
    generator = torch.Generator().manual_seed(0)
    steps = []
    for t in range(4):
        steps.append(session.sample(generator))
        if t < 3:
            session.advance(steps[-1][0], np.ones(4, dtype=bool))
    tokens, logprobs, entropies = (np.stack(x, axis=1) for x in zip(*steps))
    for row, temp in enumerate(temps):
        context = seqs[row // 2]
        ids = torch.from_numpy(np.concatenate([context, tokens[row]]))[None]
        with torch.no_grad():
            logp = (model(ids).logits[0, len(context) - 1 : -1, :48] / temp).log_softmax(-1)
        chosen = logp.gather(1, torch.from_numpy(tokens[row])[:, None])[:, 0]
        np.testing.assert_allclose(logprobs[row], chosen.numpy(), atol=1e-5)
        np.testing.assert_allclose(entropies[row], -(logp.exp() * logp).sum(-1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="one temperature per row"):
        engine.start(seqs, SamplingParams(), repeat=2, temperatures=[1.0, 1.0])
    with pytest.raises(ValueError, match="> 0"):
        engine.start(seqs, SamplingParams(), temperatures=[1.0, 0.0])


def test_update_scores_each_row_at_its_temperature_and_the_first_ratio_is_one(tmp_path, monkeypatch):
    trainer = ERPOTrainer(erpo_config(tmp_path, ppo_epochs=2, micro_batch_size=2), model=tiny_model(VOCAB))
    rng = np.random.default_rng(0)
    samples = TrainSamples(
        contexts=[rng.integers(2, VOCAB, size=5) for _ in range(4)],
        targets=[rng.integers(2, VOCAB, size=n) for n in (3, 4, 2, 5)],
        advantages=np.array([0.5, -0.5, 1.0, -1.0], dtype=np.float32),
        streams=np.zeros(4, dtype=np.int64),
        temperatures=np.array([1.0, 1.3, np.nan, 0.7]),  # nan = the config's temperature (1.0)
    )
    # Reference: each row's log-probs from a direct forward pass at its own temperature.
    expected = []
    with torch.no_grad():
        for c, t, temp in zip(samples.contexts, samples.targets, [1.0, 1.3, 1.0, 0.7]):
            ids = torch.from_numpy(np.concatenate([c, t]))[None]
            logp = (trainer.model(ids).logits[0, len(c) - 1 : -1].float() / temp).log_softmax(-1)
            expected.append(logp.gather(1, torch.from_numpy(t)[:, None])[:, 0])
    calls: list[tuple[torch.Tensor, torch.Tensor, np.ndarray]] = []
    real = update.clipped_policy_loss

    def spy(logp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, **kw: Any) -> Any:
        calls.append((logp.detach().clone(), old.clone(), adv.numpy().copy()))
        return real(logp, old, adv, **kw)

    monkeypatch.setattr(update, "clipped_policy_loss", spy)
    metrics = trainer.update(samples)
    assert np.isfinite(metrics["loss/total"])
    first_epoch = calls[: len(calls) // 2]
    for logp, old, adv in first_epoch:
        torch.testing.assert_close(logp, old, rtol=0, atol=0)  # ratio exactly 1
        for row_logp, a in zip(logp, adv):
            i = int(np.flatnonzero(samples.advantages == a)[0])
            torch.testing.assert_close(row_logp[: len(samples.targets[i])], expected[i], rtol=1e-5, atol=1e-5)
    # Scoring every row at the config's temperature would have given other log-probs.
    batch = pack([samples.contexts[1]], [samples.targets[1]], torch.device("cpu"))
    assert not torch.allclose(update.token_logprobs(trainer.model, batch, 1.0)[0], expected[1])


def test_train_samples_concat_and_select_keep_temperatures():
    part = TrainSamples([np.array([1])] * 2, [np.array([2])] * 2, np.zeros(2, np.float32), np.zeros(2, np.int64),
                        np.array([1.1, 1.2]))
    plain = TrainSamples([np.array([1])], [np.array([2])], np.zeros(1, np.float32), np.ones(1, np.int64))
    both = TrainSamples.concat([part, plain])
    np.testing.assert_array_equal(both.temperatures, [1.1, 1.2, np.nan])
    np.testing.assert_array_equal(both.select(np.array([False, True, True])).temperatures, [1.2, np.nan])
    assert TrainSamples.concat([plain, plain]).temperatures is None


@pytest.mark.parametrize("trainer_cls, config_cls", [(ERPOTrainer, ERPOConfig), (DeepERPOTrainer, DeepERPOConfig)])
def test_two_step_smoke_run_and_resume(tmp_path, monkeypatch, trainer_cls, config_cls):
    from deepgrpo_agent import trainer as trainer_module

    config = erpo_config(tmp_path, config_cls, total_steps=2, save_every=1, erpo_pseudo_advantage=0.1)
    trainer = trainer_cls(config, model=tiny_model(VOCAB))
    for i in trainer.train_indices:  # every prompt was all-correct once: roots start at 1.1
        trainer.tracker.update(trainer.env.problem_id(i), C)
    trained: list[np.ndarray] = []
    branched: list[np.ndarray] = []
    real_update, real_branch = trainer.update, trainer_module.branch_rollouts
    monkeypatch.setattr(trainer, "update", lambda s: trained.append(s.temperatures) or real_update(s))
    monkeypatch.setattr(trainer_module, "branch_rollouts",
                        lambda *a, **kw: branched.append(np.asarray(kw["temperatures"])) or real_branch(*a, **kw))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train()
    assert np.isfinite(metrics["loss/total"])
    for p, q in zip(before, trainer.model.parameters()):
        assert not torch.equal(p, q)
    for key in ("erpo/all_correct_fraction", "erpo/all_wrong_fraction", "erpo/mixed_fraction",
                "erpo/temperature_mean", "erpo/temperature_hist_0", "erpo/revived_fraction",
                "erpo/raised_prompts"):
        assert key in metrics
    # Roots of the first step, and the branches from their pivots, are sampled and trained at 1.1.
    assert trained[0] is not None and len(trained[0]) > 0
    np.testing.assert_allclose(trained[0], 1.1)
    if trainer_cls is DeepERPOTrainer:
        assert metrics["pivot/count"] > 0 and metrics["budget/branch_rollouts"] > 0
        np.testing.assert_allclose(branched[0], 1.1)
    resumed = trainer_cls(erpo_config(tmp_path, config_cls, total_steps=3, resume=True), model=tiny_model(VOCAB, 5))
    assert resumed.step == 2 and resumed.tracker.state_dict() == trainer.tracker.state_dict()
    if trainer_cls is DeepERPOTrainer:
        assert list(resumed.phi.buffer) == list(trainer.phi.buffer)  # type: ignore[attr-defined]


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="erpo_max_temperature"):
        ERPOConfig(temperature=1.0, erpo_max_temperature=0.9)
    with pytest.raises(ValueError, match="erpo_temperature_step"):
        DeepERPOConfig(erpo_temperature_step=0.0)
    with pytest.raises(ValueError, match="branches_per_pivot"):
        DeepERPOConfig(branches_per_pivot=1)  # DEEP-GRPO's checks still run
    with pytest.raises(ValueError, match="erpo_reset"):
        ERPOConfig(erpo_reset="sometimes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ERPOConfig"):
        ERPOTrainer(tiny_config(tmp_path), model=tiny_model(VOCAB))  # type: ignore[arg-type]


def test_a_prompt_drawn_twice_in_one_step_is_one_visit(tmp_path, monkeypatch):
    """At an epoch boundary a step can draw one problem twice: the tracker moves once (by one ΔT), not twice."""
    config = erpo_config(tmp_path, env_kwargs={**tiny_config(tmp_path).env_kwargs, "verifier": always_one})
    trainer = ERPOTrainer(config, model=tiny_model(VOCAB))
    source = trainer.env.unwrapped.core.source
    twice = np.array([3, 3])
    monkeypatch.setattr(trainer, "next_problems", lambda count: twice[:count])
    samples, metrics = trainer.collect_samples()
    np.testing.assert_allclose(samples.temperatures, 1.0)  # both groups sampled at the step's temperature
    pid = source.problem(3).id
    assert trainer.tracker.level(pid) == 1 and trainer.tracker.temperature(pid) == pytest.approx(1.1)
    assert trainer.tracker.history(pid) == ("all-correct",)
    assert metrics["erpo/raised_prompts"] == 1 and metrics["erpo/tracked_prompts"] == 1


def test_one_visit_pools_the_groups_of_a_prompt_and_refill_rounds(tmp_path, monkeypatch):
    # The union of an all-correct and a mixed group is mixed: the level decays from 1 to 0.
    config = erpo_config(tmp_path, dynamic_sampling="refill", max_refill_rounds=2,
                         env_kwargs={**tiny_config(tmp_path).env_kwargs, "verifier": always_one})
    trainer = ERPOTrainer(config, model=tiny_model(VOCAB))
    trainer.tracker.update("p", C)
    trainer.record_visits({"p": [np.array(C), np.array(M)]})
    assert trainer.tracker.level("p") == 0 and trainer.tracker.history("p") == ("all-correct", "mixed")
    # Refill rounds re-draw the same problems (all-correct, no signal): 3 rounds, still one visit each.
    first = trainer.next_problems(2)
    monkeypatch.setattr(trainer, "next_problems", lambda count: first[:count])
    _, metrics = trainer.collect_samples()
    assert metrics["rollout/refill_rounds"] == 2 and trainer.budget.root_rollouts == 3 * 8
    source = trainer.env.unwrapped.core.source
    for i in first:
        assert trainer.tracker.history(source.problem(int(i)).id) == ("all-correct",)
        assert trainer.tracker.level(source.problem(int(i)).id) == 1
