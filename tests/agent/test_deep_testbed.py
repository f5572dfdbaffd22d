"""The deep testbed's corpus: one hard step (the last, where it carries), forgot-the-carry slips, no retractions."""

from __future__ import annotations

import numpy as np
import pytest

from deepgrpo_agent.policy import model_path
from deepgrpo_agent.testbed import DEEP_TESTBED, DEEP_TESTBED_DIR, DEEP_TESTBED_ENV_KWARGS
from deepgrpo_env.arithmetic import ArithmeticVerifier, evaluate, parse_expression, solution_text
from scripts.deep_testbed_sft import DeepRecipe, carries, forgot_carry, hard_step_solution, is_hard


def test_carry_rules_by_hand():
    from deepgrpo_env.arithmetic import Step

    assert carries(Step(0, 12, "+", 9, 21)) and forgot_carry(Step(0, 12, "+", 9, 21)) == 11
    assert carries(Step(0, 31, "-", 4, 27)) and forgot_carry(Step(0, 31, "-", 4, 27)) == 37
    assert not carries(Step(0, 12, "+", 7, 19)) and not carries(Step(0, 3, "*", 9, 27))
    # 9+4-3-9+5+6: the last step is 6+6 = 12 (a carry) -> hard; 9*3*4*2+6+7: 222+7 -> easy
    assert is_hard("9+4-3-9+5+6") and not is_hard("9*3*4*2+6+7")


def test_hard_step_writes_the_forgot_carry_value_and_no_retraction():
    rng = np.random.default_rng(0)
    verifier = ArithmeticVerifier()
    texts = [hard_step_solution("9+4-3-9+5+6", rng, easy_slip=0.0, hard_correct=0.2).text for _ in range(400)]
    right = solution_text("9+4-3-9+5+6")
    assert set(texts) == {right, right.replace("6+6=12\n=12", "6+6=2\n=2")}
    share = np.mean([t == right for t in texts])
    assert share == pytest.approx(0.2, abs=0.06)
    assert not any("no " in t for t in texts)
    assert all(verifier(t, str(evaluate(parse_expression("9+4-3-9+5+6")))) == float(t == right) for t in texts)
    # an easy prompt with no easy slips is always solved
    easy = {hard_step_solution("9*3*4*2+6+7", rng, easy_slip=0.0, hard_correct=0.0).text for _ in range(20)}
    assert easy == {solution_text("9*3*4*2+6+7")}


def test_recipe_and_model_name():
    assert DeepRecipe().level == DEEP_TESTBED_ENV_KWARGS["level"] == 5
    with pytest.raises(ValueError, match="hard_correct"):
        DeepRecipe(hard_correct=1.5)
    with pytest.raises(ValueError, match="hard_step"):
        DeepRecipe(hard_step=5)
    assert model_path(DEEP_TESTBED) == DEEP_TESTBED_DIR


def test_shipped_policy_realizes_the_design():
    """The shipped weights (800 SFT steps): hard prompts mostly fail greedy and succeed ~0.2 of samples; easy ones succeed."""
    import json

    from deepgrpo_agent.testbed import load_testbed
    from deepgrpo_env.arithmetic import ArithmeticSource
    from scripts.testbed_sft import evaluate_testbed, heldout_indices

    recipe = json.loads((DEEP_TESTBED_DIR / "recipe.json").read_text())
    assert recipe["recipe"]["steps"] == DeepRecipe().steps, "recipe.json is not the shipped recipe's run"
    d = DeepRecipe()
    source = ArithmeticSource(d.level, seed=0, max_operand=d.max_operand)
    test = heldout_indices(256, d.level, d.max_operand)
    hard = [i for i in test if is_hard(source.expression(i), d.hard_step)][:48]
    easy = [i for i in test if not is_hard(source.expression(i), d.hard_step)][:48]
    model = load_testbed(DEEP_TESTBED_DIR)
    h = evaluate_testbed(model, hard, level=d.level, max_operand=d.max_operand, samples=4)
    e = evaluate_testbed(model, easy, level=d.level, max_operand=d.max_operand, samples=4)
    assert h["eval/accuracy"] < 0.35 and 0.08 < h["eval/sample_accuracy"] < 0.4, h
    assert e["eval/accuracy"] > 0.7 and e["eval/sample_accuracy"] > 0.6, e
