"""The deep testbed's corpus: long runs of easy steps and one hard step at a controlled depth (not part of the library).

The arithmetic testbed (scripts/testbed_sft.py) fails by slips anywhere, so recoverability only falls
with depth. This corpus puts the difficulty in one place: on Arithmetic-v0 level 5 every step is
easy (an uncorrected slip with probability ``easy_slip``) except the *hard step* (index
``hard_step``; the last by default, i.e. the deepest), and only on *hard prompts*: those whose hard
step is an addition with a carry or a subtraction with a borrow. There the solution writes the right
result with probability ``hard_correct`` and otherwise the classic forgot-the-carry value (a + b - 10,
a - b + 10), and continues from it. No retractions. So for a hard prompt the root succeeds about
``hard_correct`` of the time, greedy decoding fails (the forgot-the-carry value is the mode), and the
state just before the hard step is as recoverable as the root while sitting deep in the response.
docs/pivot_utility.md and docs/recoverability.md have the measured numbers;
``scripts/train_deep_testbed.py`` trains and ships the policy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from deepgrpo_agent.testbed import load_testbed

try:  # run as a script from scripts/ (train_deep_testbed.py), or imported as scripts.deep_testbed_sft (tests)
    from testbed_sft import (
        CorpusStream,
        Recipe,
        SFTBatch,
        SFTRun,
        SlippedSolution,
        _stays_in_range,
        collate,
        encode_example,
    )
except ImportError:
    from scripts.testbed_sft import (
        CorpusStream,
        Recipe,
        SFTBatch,
        SFTRun,
        SlippedSolution,
        _stays_in_range,
        collate,
        encode_example,
    )

from deepgrpo_env.arithmetic import Expression, Step, next_step, parse_expression, rewrite, solution_steps

_EASY_OFFSETS = (-10, -2, -1, 1, 2, 10)


@dataclass(frozen=True)
class DeepRecipe(Recipe):
    """:class:`~testbed_sft.Recipe` with the hard-step corpus (``slip_prob``/``fix_prob`` are unused)."""

    level: int = 5
    easy_slip: float = 0.01
    """Per easy step: probability of an uncorrected slip (off by one or two, or a wrong tens digit)."""
    hard_correct: float = 0.2
    """On a hard prompt's hard step: probability of the right result (else the forgot-the-carry value)."""
    hard_step: int = -1
    """Index of the hard step among the solution's steps (negative counts from the end; -1 = the last)."""
    batch_size: int = 96
    steps: int = 800
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    init: str = "arithmetic-testbed"
    """Start from these weights ("arithmetic-testbed": the shipped level-3 policy, which already writes the
    format; "" = from scratch as the arithmetic testbed was). Fine-tuning keeps the SFT to minutes on a CPU."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("easy_slip", "hard_correct"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Expected `{name}` in [0, 1], got {getattr(self, name)!r}.")
        if not -self.level <= self.hard_step < self.level:
            raise ValueError(f"Expected `hard_step` in [-{self.level}, {self.level}), got {self.hard_step}.")


def carries(step: Step) -> bool:
    """Whether ``step`` is an addition with a carry or a subtraction with a borrow in the units digit."""
    if step.op == "+":
        return step.a % 10 + step.b % 10 >= 10
    if step.op == "-":
        return step.a % 10 < step.b % 10
    return False


def forgot_carry(step: Step) -> int:
    """The forgot-the-carry result of a carrying step: a + b - 10, or a - b + 10."""
    return step.value - 10 if step.op == "+" else step.value + 10


def hard_index(expression: Expression, hard_step: int) -> int:
    """The hard step's index among the reference steps (``hard_step`` may count from the end)."""
    n = len(expression.ops)
    return hard_step % n


def is_hard(problem: Expression | str, hard_step: int = -1) -> bool:
    """Whether the problem's hard step carries (the prompts on which the policy is unsure)."""
    expression = parse_expression(problem) if isinstance(problem, str) else problem
    steps = solution_steps(expression)
    return bool(steps) and carries(steps[hard_index(expression, hard_step)])


def hard_step_solution(
    problem: Expression | str, rng: np.random.Generator, *, easy_slip: float, hard_correct: float, hard_step: int = -1
) -> SlippedSolution:
    """A solution of the deep corpus (see the module docstring); ``corrected`` is always 0.

    A wrong value that would push a later result outside [0, 999] is written correctly instead.
    """
    expression = parse_expression(problem) if isinstance(problem, str) else problem
    values, ops = list(expression.operands), list(expression.ops)
    target = hard_index(expression, hard_step) if ops else -1
    lines: list[str] = []
    k = uncorrected = 0
    while ops:
        step = next_step(values, ops)
        value = step.value
        if k == target and carries(step):
            if rng.random() >= hard_correct:
                value = forgot_carry(step)
        elif rng.random() < easy_slip:
            value = step.value + int(rng.choice(_EASY_OFFSETS))
        if value != step.value and not (0 <= value <= 999 and _stays_in_range(*rewrite(values, ops, step, value))):
            value = step.value
        uncorrected += int(value != step.value)
        lines.append(step.line(value))
        values, ops = rewrite(values, ops, step, value)
        k += 1
    lines.append(f"={values[0]}")
    return SlippedSolution("\n".join(lines), k, uncorrected, 0)


class HardStepStream(CorpusStream):
    """:class:`~testbed_sft.CorpusStream` writing :func:`hard_step_solution` solutions."""

    recipe: DeepRecipe

    def batch(self, size: int) -> SFTBatch:
        examples: list[tuple[list[int], int]] = []
        r = self.recipe
        while len(examples) < size:
            expression = self.source.expression(int(self.rng.integers(len(self.source))))
            question = expression.text()
            if question in self.exclude:
                self.skipped += 1
                continue
            solution = hard_step_solution(expression, self.rng, easy_slip=r.easy_slip, hard_correct=r.hard_correct,
                                          hard_step=r.hard_step)
            examples.append(encode_example(question, solution.text, self.codec))
        return collate(examples, self.codec)


class DeepSFTRun(SFTRun):
    """:class:`~testbed_sft.SFTRun` on the hard-step corpus."""

    def __init__(self, recipe: DeepRecipe) -> None:
        super().__init__(recipe)
        self.stream = HardStepStream(recipe, np.random.default_rng(recipe.seed))
        if recipe.init:
            from deepgrpo_agent.policy import model_path

            self.model.load_state_dict(load_testbed(model_path(recipe.init)).state_dict())


def recipe_dict(recipe: DeepRecipe) -> dict[str, object]:
    return dataclasses.asdict(recipe)


__all__ = ["DeepRecipe", "DeepSFTRun", "HardStepStream", "carries", "forgot_carry", "hard_index",
           "hard_step_solution", "is_hard", "recipe_dict"]
