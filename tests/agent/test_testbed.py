"""The arithmetic testbed: shipped weights load offline and solve problems; corpus and training behave."""

from __future__ import annotations

import dataclasses
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs_registry  # noqa: F401  (registers Arithmetic-v0)
from deepgrpo_agent.policy import load_policy, model_path
from deepgrpo_agent.testbed import TESTBED, TESTBED_DIR, TESTBED_ENV_KWARGS, check_vocab, shipped_recipe
from deepgrpo_env.arithmetic import ArithmeticVerifier, CharCodec, solution_text
from scripts.testbed_sft import (
    CorpusStream,
    Recipe,
    SFTRun,
    encode_example,
    evaluate_testbed,
    first_wrong_line,
    heldout_expressions,
    heldout_indices,
    slip_rate,
    slipped_solution,
)

# Greedy accuracy of the shipped policy on the trainer's last 32 held-out problems was 0.875 when it
# was trained (0.816 on the last 512); the floor leaves a wide margin for other BLAS/torch builds.
GREEDY_FLOOR = 0.5

LINE = re.compile(r"^(no )?\d+[-+*]\d+=\d+$|^=\d+$")

TINY = Recipe(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, batch_size=16, steps=30,
              learning_rate=1e-2, warmup_steps=1)


def test_shipped_weights_load_offline_in_fp32(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_policy(TESTBED, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert tokenizer is None
    assert model.config.vocab_size == CharCodec().vocab_size
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model_path(TESTBED) == TESTBED_DIR
    recipe = shipped_recipe()
    assert recipe["codec"] == CharCodec().fingerprint()
    assert recipe["recipe"]["level"] == TESTBED_ENV_KWARGS["level"]
    assert sum(f.stat().st_size for f in TESTBED_DIR.iterdir()) < 8e6


def test_shipped_policy_writes_well_formed_solutions():
    from deepgrpo_agent.engine.hf import HFEngine
    from deepgrpo_agent.engine.protocol import SamplingParams
    from deepgrpo_agent.rollout import collect_rollouts

    model, _ = load_policy(TESTBED, device=torch.device("cpu"), dtype=torch.float32)
    level, operand = TESTBED_ENV_KWARGS["level"], TESTBED_ENV_KWARGS["max_operand"]
    indices = heldout_indices(32, level, operand)
    metrics = evaluate_testbed(model, indices, level=level, max_operand=operand, samples=0)
    assert metrics["eval/accuracy"] >= GREEDY_FLOOR
    venv = gym.make_vec("Arithmetic-v0", num_envs=32, autoreset_mode="Disabled", copy=False, **TESTBED_ENV_KWARGS)
    with torch.no_grad():
        batch = collect_rollouts(venv, HFEngine(model), indices, 1, SamplingParams(0.0, 1.0, 80))
    assert batch.terminated.all()
    codec = CharCodec()
    for ids in batch.new_ids:
        lines = codec.decode(ids.tolist()).split("\n")
        assert all(LINE.match(line) for line in lines), lines
        assert lines[-1].startswith("=")


def test_vocab_mismatch_is_a_clear_error():
    check_vocab(CharCodec().vocab_size)
    with pytest.raises(ValueError, match="Arithmetic-v0"):
        check_vocab(49152)


def test_trainer_refuses_the_testbed_on_another_env(tmp_path):
    from deepgrpo_agent import GRPOTrainer
    from tests.agent.tiny import tiny_config

    with pytest.raises(ValueError, match=r"MathReasoning-v0's action space has \d+ tokens; train it on env_id="):
        GRPOTrainer(tiny_config(tmp_path, model=TESTBED))


def test_sft_prompt_is_what_the_env_shows():
    env = gym.make("Arithmetic-v0", **TESTBED_ENV_KWARGS)
    obs, info = env.reset(options={"problem_index": 17})
    ids, prompt_length = encode_example(info["question"], "1+2=3\n=3", CharCodec())
    assert prompt_length == int(obs["prompt_length"][0])
    assert ids[:prompt_length] == obs["input_ids"][:prompt_length].tolist()
    assert ids[-1] == CharCodec().eos_token_id


def test_slip_rates_match_their_parameters():
    rates = slip_rate(dataclasses.replace(TINY, slip_prob=0.2, fix_prob=0.1), 2000)
    assert abs(rates["uncorrected"] - 0.2) < 0.025
    assert abs(rates["corrected"] - 0.1) < 0.02
    assert slip_rate(dataclasses.replace(TINY, slip_prob=0.0, fix_prob=0.0), 200)["uncorrected"] == 0.0


def test_slips_change_the_answer_only_when_uncorrected():
    rng = np.random.default_rng(0)
    verify = ArithmeticVerifier()
    assert slipped_solution("3+4*2", rng, 0.0, 0.0).text == solution_text("3+4*2")
    seen = {"one uncorrected": 0, "only corrected": 0}
    for k in range(300):
        question = f"{k % 9 + 1}*{k % 7}+{k % 5}-{k % 3}"
        answer = solution_text(question).rsplit("=", 1)[1]
        s = slipped_solution(question, rng, 0.3, 0.3)
        if s.uncorrected == 1:
            seen["one uncorrected"] += 1
            assert verify(s.text, answer) == 0.0
        elif s.uncorrected == 0:
            seen["only corrected"] += s.corrected > 0
            assert verify(s.text, answer) == 1.0
    assert min(seen.values()) > 20


def test_corpus_skips_the_held_out_problems():
    exclude = heldout_expressions(3, 9, count=64)
    stream = CorpusStream(TINY, np.random.default_rng(0), exclude=exclude)
    batch = stream.batch(64)
    codec = CharCodec()
    questions = {codec.decode(row.tolist()).split("\n")[0] for row in batch.input_ids}
    assert not questions & exclude
    assert (batch.labels[:, :5] == -100).all()  # no loss on the prompt


def test_first_wrong_line_finds_the_slip():
    assert first_wrong_line("3+4*2", "4*2=8\n3+8=12\n=12") == (6, "slip")
    assert first_wrong_line("3+4*2", "4*2=9\n3+9=12\n=12") == (0, "slip")
    assert first_wrong_line("3+4*2", "3+4=7\n7*2=14\n=14") == (0, "step")
    assert first_wrong_line("3+4*2", "4*2=8\n3+8=11\n=12") == (13, "answer")


def test_training_runs_resumes_exactly_and_writes_nothing(tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in TESTBED_DIR.iterdir()}
    torch.set_num_threads(1)
    run = SFTRun(TINY).train(30, log=None)
    assert np.mean(run.losses[-5:]) < np.mean(run.losses[:5]) - 0.3
    half = SFTRun(TINY).train(3, log=None)
    half.save_snapshot(tmp_path / "s.pt")
    resumed = SFTRun.from_snapshot(tmp_path / "s.pt").train(6, log=None)
    assert resumed.losses == run.losses[:6]
    assert {p.name: p.stat().st_mtime_ns for p in TESTBED_DIR.iterdir()} == before


def test_grpo_trains_the_testbed(tmp_path):
    from deepgrpo_agent import GRPOConfig, GRPOTrainer

    config = GRPOConfig(env_id="Arithmetic-v0", env_kwargs=dict(TESTBED_ENV_KWARGS), model=TESTBED, device="cpu",
                        prompts_per_step=2, group_size=4, max_new_tokens=80, total_steps=1, eval_every=0,
                        save_every=0, pass_k=0, tensorboard=False, progress=False, output_dir=str(tmp_path))
    trainer = GRPOTrainer(config)
    trained = []
    real_update = trainer.update
    trainer.update = lambda s: trained.append(s) or real_update(s)  # type: ignore[method-assign]
    before = [p.detach().clone() for p in trainer.model.parameters()]
    metrics = trainer.train()
    assert next(trainer.model.parameters()).dtype == torch.float32
    # The shipped policy, not a random one: it already solves a good share of its level (~48% sampled).
    assert metrics["rollout/accuracy"] > 0.1  # a random-init policy scores ~0
    # One GRPO step at ratio 1: the token-mean loss is -sum(A * length) / tokens, by hand.
    (samples,) = trained
    lengths = np.array([len(t) for t in samples.targets])
    expected = -float((samples.advantages * lengths).sum()) / lengths.sum()
    assert metrics["loss/total"] == pytest.approx(expected, abs=1e-6)
    if np.any(samples.advantages != 0):
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
