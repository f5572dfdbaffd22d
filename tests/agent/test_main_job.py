"""The main job's configuration and its before -> after summary (docs/main_job.md)."""

from __future__ import annotations

import math

from deepgrpo_agent.cli import MAIN_JOB, accuracy_summary
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.config_cli import parse_config
from deepgrpo_env.prompts import PromptTemplate


def test_main_job_flags_parse_into_a_valid_config():
    config = parse_config(GRPOConfig, MAIN_JOB + ["--seed", "2"])
    assert config.env_id == "MathReasoning-MAWPS-SingleOp-v0" and config.seed == 2
    assert config.eval_problems >= 300 and config.dtype == "auto"
    assert config.truncated_roots_fail and config.temperature == 0.7  # reward = finished and correct
    assert config.eval_every == config.total_steps  # evaluated before and after only
    assert PromptTemplate(style=config.env_kwargs["prompt"]).text("Q?") == (
        "Q?\nAnswer briefly and end with the final number.")


def test_accuracy_summary_matches_hand_computed_standard_errors():
    history = [{"step": 0.0, "eval/accuracy": 0.1, "eval/problems": 200.0},
               {"step": 12.0, "eval/accuracy": 0.2, "eval/problems": 200.0}]
    lines = accuracy_summary(history)
    se_a, se_b = math.sqrt(0.1 * 0.9 / 200), math.sqrt(0.2 * 0.8 / 200)  # 0.0212, 0.0283
    se = math.sqrt(se_a**2 + se_b**2)  # 0.0354
    assert f"0.100 ± {se_a:.3f}" in lines[0] and f"0.200 ± {se_b:.3f}" in lines[0]
    assert f"gain +0.100 ± {se:.3f}" in lines[1]
    assert f"{0.1 - 1.96 * se:+.3f} .. {0.1 + 1.96 * se:+.3f}" in lines[1] and "+2.8 standard errors" in lines[1]
    assert accuracy_summary(history[:1]) == []


def test_paired_gain_matches_hand_computed_values():
    from deepgrpo_agent.cli import paired_gain

    before = [True, False, False, False, True, False, False, False, False, False]
    after = [True, True, True, False, False, False, False, False, False, True]
    gain, se, won, lost = paired_gain(before, after)
    # d = [0, 1, 1, 0, -1, 0, 0, 0, 0, 1]: mean 0.2, population variance 4/10 - 0.04 = 0.36, se = 0.6 / sqrt(10)
    assert (won, lost) == (3, 1) and math.isclose(gain, 0.2) and math.isclose(se, 0.6 / math.sqrt(10))
    history = [{"step": 0.0, "eval/accuracy": 0.2, "eval/problems": 10.0},
               {"step": 5.0, "eval/accuracy": 0.4, "eval/problems": 10.0}]
    lines = accuracy_summary(history, [before, after])
    assert f"gain +0.200 ± {se:.3f} paired" in lines[1] and "3 problems gained, 1 lost" in lines[1]
    assert "unpaired" in lines[2]
    assert "paired" not in "".join(accuracy_summary(history))  # without per-problem answers: unpaired only
