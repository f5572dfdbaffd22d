"""Learning tests: on Arithmetic-v0's easiest level a tiny random-init model's reward must rise.

Setup: level 1 (one operation) with operands 0..2, a two-token response budget, and the numeric
verifier (the last number in the response must equal the answer) instead of the strict
``=<answer>`` form: under a random policy ~5% of responses score, enough for GRPO to have signal
from the first step. Checked over seeds 0-2 when written: GRPO went from 0.04-0.10 mean reward over
the first 5 steps to 0.35-0.50 over the last 5 (100 steps, ~2 s); DEEP-GRPO from 0.04-0.08 to
0.35-0.39 (~4 s). The thresholds below leave a wide margin.
"""

from __future__ import annotations

import numpy as np

from deepgrpo_agent import DeepGRPOConfig, DeepGRPOTrainer, GRPOConfig, GRPOTrainer
from deepgrpo_agent.callbacks import Callback
from deepgrpo_env.arithmetic import CharCodec
from tests.agent.tiny import tiny_model

STEPS = 100


class Recorder(Callback):
    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_step_end(self, trainer, step, metrics) -> None:  # type: ignore[no-untyped-def]
        self.metrics.append(dict(metrics))


def settings(tmp_path) -> dict:
    return dict(
        env_id="Arithmetic-v0",
        env_kwargs={"level": 1, "max_operand": 2, "max_response_tokens": 2, "verifier": "numeric"},
        model="unused", device="cpu", seed=0, prompts_per_step=8, group_size=8, max_new_tokens=2,
        total_steps=STEPS, learning_rate=1e-2, eval_every=0, save_every=0, tensorboard=False,
        progress=False, output_dir=str(tmp_path), micro_batch_size=64,
    )


def rewards(recorder: Recorder) -> np.ndarray:
    return np.array([m["rollout/reward_mean"] for m in recorder.metrics])


def test_grpo_reward_rises_on_arithmetic(tmp_path):
    recorder = Recorder()
    trainer = GRPOTrainer(GRPOConfig(**settings(tmp_path)), model=tiny_model(CharCodec().vocab_size),
                          callbacks=[recorder])
    trainer.train()
    r = rewards(recorder)
    assert len(r) == STEPS
    assert r[:3].mean() < 0.12  # near chance at the start
    assert r[-10:].mean() > r[:10].mean() + 0.15 and r[-10:].mean() > 0.25


def test_deep_grpo_runs_end_to_end_and_reward_rises(tmp_path):
    recorder = Recorder()
    config = DeepGRPOConfig(**settings(tmp_path), segment="tokens", segment_tokens=1, branches_per_pivot=4)
    trainer = DeepGRPOTrainer(config, model=tiny_model(CharCodec().vocab_size), callbacks=[recorder])
    trainer.train()
    r = rewards(recorder)
    assert r[-10:].mean() > r[:10].mean() + 0.15 and r[-10:].mean() > 0.25
    pivots = np.array([m["pivot/count"] for m in recorder.metrics])
    assert pivots.min() > 0  # failed roots always exist here, so every step branched
    assert recorder.metrics[-1]["budget/branch_rollouts"] == pivots.sum() * 4
    assert any(m["adv/local_count"] > 0 for m in recorder.metrics)  # the local stream trained


def silence_global_stream(trainer: DeepGRPOTrainer) -> None:
    """Zero every root advantage: the roots still fail and give pivots, but only branches carry signal."""
    trainer.root_advantages = lambda batch: np.zeros(len(batch), dtype=np.float32)  # type: ignore[method-assign]


def test_the_local_stream_alone_raises_the_reward_and_nothing_else_does(tmp_path):
    """DEEP-GRPO with its global stream silenced learns through the local stream only; with the local
    stream switched off (lambda = 0) the same run learns nothing. Checked when written (seeds 0-2, 60
    steps): lambda = 1 went from 0.04-0.05 over the first 10 steps to 0.27-0.30 over the last 10;
    lambda = 0 stayed at 0.04-0.06."""
    steps = 60
    last: dict[float, float] = {}
    for lam in (1.0, 0.0):
        recorder = Recorder()
        config = DeepGRPOConfig(**{**settings(tmp_path / str(lam)), "total_steps": steps}, segment="tokens",
                                segment_tokens=1, branches_per_pivot=4, local_loss_weight=lam)
        trainer = DeepGRPOTrainer(config, model=tiny_model(CharCodec().vocab_size), callbacks=[recorder])
        silence_global_stream(trainer)
        trainer.train()
        r = rewards(recorder)
        assert r[:10].mean() < 0.1
        assert all(m["adv/global_count"] == 0 for m in recorder.metrics)  # no root row was trained
        last[lam] = float(r[-10:].mean())
    assert last[1.0] > 0.18 and last[0.0] < 0.12
