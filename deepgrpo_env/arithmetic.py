"""Arithmetic-v0: procedurally generated multi-step arithmetic over a character-level tokenizer.

A fast CPU testbed for the RL algorithms. Problem ``i`` of a level is a pure function of
``(level, seed, max_operand, i)``; the level is the number of operations (level 1 is ``"3+4"``).
Expressions use ``+``, ``-`` and ``*`` over integers in ``[0, max_operand]`` with the usual
precedence, and every intermediate result lies in ``[0, MAX_VALUE]`` so answers stay short.

The prompt is the expression, a newline and ``"A:"``::

    3+4*2
    A:

Solution format (what a trained policy writes, and what supervised pre-training imitates):

- One step per line. Each step evaluates the leftmost operation of the highest precedence
  (the leftmost ``*`` while there is one, else the leftmost ``+``/``-``) and writes it as
  ``<a><op><b>=<result>``. The expression is then rewritten with the result in its place, and
  the next line works on the rewritten expression.
- The last line is ``=<answer>``, followed by the end-of-sequence token.

For ``3+4*2`` the reference solution is ``"4*2=8\\n3+8=11\\n=11"``.

Recovering from a slip: a line that starts with the marker ``"no "`` (:data:`RETRACT`) restates
an earlier step with its correct result, ``no <a><op><b>=<result>``. It cancels the most recent
line that computed ``<a><op><b>`` and every line after it; the solution continues from the
corrected value. For example, with the slip corrected at once::

    4*2=9
    no 4*2=8
    3+8=11
    =11

or corrected one step later (``max_delay=1`` in :func:`corrupt_solution`)::

    4*2=9
    3+9=12
    no 4*2=8
    3+8=11
    =11

Grading (:class:`ArithmeticVerifier`): the answer is the integer right after the last ``=`` in the
response; an exact match with the reference scores 1.0, anything else (including no answer) 0.0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from gymnasium.vector import AutoresetMode

from deepgrpo_env.env import ReasoningEnv, VerifierArg
from deepgrpo_env.problems import Problem
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.vector import ReasoningVectorEnv

MAX_VALUE = 999
"""Largest value any operand or intermediate result may take (all are >= 0)."""

RETRACT = "no "
"""Marker that opens a correction line (see the module docstring)."""

ANSWER_CUE = "A:"
"""Text after the question that cues the solution."""

PROMPT = PromptTemplate(style="plain", instruction=ANSWER_CUE, chat=True)
"""The Arithmetic prompt template: ``"<expression>\\nA:"``."""

OPERATORS = ("+", "-", "*")

# Uniform draws before falling back to building operands in range (see ArithmeticSource).
_UNIFORM_TRIES = 64


# -- tokenizer ----------------------------------------------------------------------------------------
class CharCodec:
    """A character-level :class:`~deepgrpo_env.codec.Codec` with a 25-symbol vocabulary.

    Ids 0-2 are the special tokens ``<pad>``, ``<eos>`` (the only stop token) and ``<bos>``; the
    rest are the characters of :attr:`alphabet`: digits, ``+-*=()``, space, newline, ``:`` and the
    letters of ``"A:"`` and ``"no "``. Parentheses and ``<bos>`` are not written by the generator
    but reserved for variants and pre-training corpora.
    """

    specials = ("<pad>", "<eos>", "<bos>")
    alphabet = "0123456789+-*=() \n:Ano"

    def __init__(self) -> None:
        self.pad_token_id = 0
        self.eos_token_id = 1
        self.bos_token_id = 2
        self.stop_token_ids: tuple[int, ...] = (self.eos_token_id,)
        offset = len(self.specials)
        self.vocab_size = offset + len(self.alphabet)
        self._ids = {ch: offset + k for k, ch in enumerate(self.alphabet)}
        self._chars = ("",) * offset + tuple(self.alphabet)
        self._fingerprint = (
            "char-"
            + hashlib.sha1(
                json.dumps([self.specials, self.alphabet, self.stop_token_ids]).encode()
            ).hexdigest()[:12]
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, one per character.

        Raises:
            ValueError: If ``text`` holds a character outside :attr:`alphabet`.
        """
        ids = self._ids
        try:
            return [ids[ch] for ch in text]
        except KeyError as e:
            raise ValueError(
                f"Expected text over the Arithmetic alphabet {self.alphabet!r}, got the character "
                f"{e.args[0]!r} in {text[:40]!r}; CharCodec has no token for it."
            ) from e

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; the special tokens decode to nothing.

        Raises:
            ValueError: If an id is outside ``[0, vocab_size)``.
        """
        ids = list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            raise ValueError(
                f"Expected token ids in [0, {self.vocab_size}), got {bad[:5]}; "
                "these ids did not come from CharCodec."
            )
        chars = self._chars
        return "".join([chars[i] for i in ids])

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """The plain encoding of ``system``, a newline and ``user`` (there is no chat template)."""
        return self.encode(f"{system}\n{user}" if system else user)

    def fingerprint(self) -> str:
        """A stable hash of the vocabulary."""
        return self._fingerprint

    def __repr__(self) -> str:
        return f"CharCodec(vocab_size={self.vocab_size})"


# -- expressions and their step-by-step evaluation ---------------------------------------------------
class Expression(NamedTuple):
    """An expression as its structure: ``operands[0] ops[0] operands[1] ops[1] ...``."""

    operands: tuple[int, ...]
    ops: tuple[str, ...]

    def text(self) -> str:
        """The expression as written in the prompt, e.g. ``"3+4*2"``."""
        parts = [str(self.operands[0])]
        for op, b in zip(self.ops, self.operands[1:]):
            parts += [op, str(b)]
        return "".join(parts)


class Step(NamedTuple):
    """One evaluated operation: ``a op b = value``, at operator position ``position``."""

    position: int
    a: int
    op: str
    b: int
    value: int

    def line(self, value: int | None = None) -> str:
        """The step as a solution line (without newline), optionally with another result."""
        return f"{self.a}{self.op}{self.b}={self.value if value is None else value}"


def parse_expression(text: str) -> Expression:
    """The structure of an expression written by :meth:`Expression.text`.

    Raises:
        ValueError: If ``text`` is not ``<int>(<op><int>)*`` over ``+-*`` with no spaces.
    """
    operands: list[int] = []
    ops: list[str] = []
    number = ""
    for ch in text:
        if ch.isdigit() and ch.isascii():
            number += ch
        elif ch in OPERATORS and number:
            operands.append(int(number))
            ops.append(ch)
            number = ""
        else:
            raise ValueError(
                f"Expected an expression like '3+4*2' (non-negative integers joined by + - *), got "
                f"{text!r}; the character {ch!r} is out of place."
            )
    if not number:
        raise ValueError(f"Expected an expression ending in a number, got {text!r}.")
    operands.append(int(number))
    return Expression(tuple(operands), tuple(ops))


def _apply(op: str, a: int, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def next_step(values: Sequence[int], ops: Sequence[str]) -> Step:
    """The leftmost highest-precedence operation of ``values``/``ops`` (``ops`` not empty)."""
    k = ops.index("*") if "*" in ops else 0
    op = ops[k]
    return Step(k, values[k], op, values[k + 1], _apply(op, values[k], values[k + 1]))


def rewrite(values: Sequence[int], ops: Sequence[str], step: Step, value: int) -> tuple[list[int], list[str]]:
    """The expression after replacing ``step``'s operation by ``value``."""
    k = step.position
    return [*values[:k], value, *values[k + 2 :]], [*ops[:k], *ops[k + 1 :]]


def solution_steps(expression: Expression) -> list[Step]:
    """The reference steps of ``expression``, in the order they are written."""
    values, ops = list(expression.operands), list(expression.ops)
    steps = []
    while ops:
        step = next_step(values, ops)
        steps.append(step)
        values, ops = rewrite(values, ops, step, step.value)
    return steps


def evaluate(expression: Expression) -> int:
    """The value of ``expression`` with the usual precedence."""
    steps = solution_steps(expression)
    return steps[-1].value if steps else expression.operands[0]


def _expression_of(problem: Problem | str) -> Expression:
    return parse_expression(problem.question if isinstance(problem, Problem) else problem)


def solution_text(problem: Problem | str) -> str:
    """The reference step-by-step solution of ``problem`` (or of an expression string), without EOS."""
    expression = _expression_of(problem)
    lines = [step.line() for step in solution_steps(expression)]
    return "\n".join([*lines, f"={evaluate(expression)}"])


def _slip(value: int, rng: np.random.Generator) -> int:
    # Typical human slips: off by one or two, or a wrong tens digit.
    candidates = [value + d for d in (-10, -2, -1, 1, 2, 10) if 0 <= value + d <= MAX_VALUE]
    return int(candidates[int(rng.integers(len(candidates)))])


def corrupt_solution(
    problem: Problem | str,
    rng: np.random.Generator,
    slip_prob: float = 0.1,
    *,
    max_delay: int = 0,
) -> str:
    """A solution in which some steps slip and are then corrected (see the module docstring).

    Each reference step slips with probability ``slip_prob``: its line shows a wrong result. The
    solution then continues from the wrong value for up to ``max_delay`` further steps (drawn
    uniformly; fewer if the wrong branch would leave ``[0, MAX_VALUE]`` or the expression ends) and
    then writes the correction line ``no <step>=<correct>`` and carries on correctly. The answer
    line is always right, so the text verifies as 1.0. Without slips it equals :func:`solution_text`.

    Args:
        problem: The problem, or its expression text.
        rng: Source of all randomness (slips, wrong values, delays).
        slip_prob: Probability that a step slips, in ``[0, 1]``.
        max_delay: Most wrong-branch steps written before the correction (0: correct on the next line).

    Raises:
        ValueError: If ``slip_prob`` is outside ``[0, 1]`` or ``max_delay`` is negative.
    """
    if not 0.0 <= slip_prob <= 1.0:
        raise ValueError(f"Expected `slip_prob` in [0, 1], got {slip_prob!r}.")
    if max_delay < 0:
        raise ValueError(f"Expected `max_delay` >= 0, got {max_delay!r}.")
    expression = _expression_of(problem)
    values, ops = list(expression.operands), list(expression.ops)
    lines: list[str] = []
    while ops:
        step = next_step(values, ops)
        if rng.random() < slip_prob:
            wrong = _slip(step.value, rng)
            lines.append(step.line(wrong))
            lines += _wrong_branch(values, ops, step, wrong, rng, max_delay)
            lines.append(RETRACT + step.line())
        else:
            lines.append(step.line())
        values, ops = rewrite(values, ops, step, step.value)
    lines.append(f"={values[0]}")
    return "\n".join(lines)


def _wrong_branch(
    values: list[int], ops: list[str], step: Step, wrong: int, rng: np.random.Generator, max_delay: int
) -> list[str]:
    """Lines that carry on from a slipped value before the slip is noticed."""
    remaining = len(ops) - 1
    delay = int(rng.integers(min(max_delay, remaining) + 1)) if max_delay and remaining else 0
    lines = []
    values, ops = rewrite(values, ops, step, wrong)
    for _ in range(delay):
        nxt = next_step(values, ops)
        if not 0 <= nxt.value <= MAX_VALUE:
            break
        lines.append(nxt.line())
        values, ops = rewrite(values, ops, nxt, nxt.value)
    return lines


# -- problems -------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"Expected `{name}` to be an int {bound}, got {value!r}.")
    return int(value)


class ArithmeticSource:
    """Procedurally generated arithmetic problems; a :class:`~deepgrpo_env.sources.ProblemSource`.

    ``problem(i)`` is a pure function of ``(level, seed, max_operand, i)``: it draws from
    ``np.random.default_rng([seed, level, max_operand, i])``: operators uniform over ``+-*`` and
    operands uniform over ``[0, max_operand]``, redrawn until every intermediate result lies in
    ``[0, MAX_VALUE]`` (about 40% of draws pass at level 10). After 64 failed draws (vanishingly rare
    below level 30), the operands are built left to right, each uniform over the values that keep
    the expression in range, which always succeeds.

    Args:
        level: Number of operations per expression (>= 1).
        seed: The problem-family seed (>= 0); distinct from the env's reset seeds.
        num_problems: Size of the index space.
        max_operand: Largest operand in the expression, in ``[1, MAX_VALUE]``.
    """

    answer_kind = "numeric"

    def __init__(
        self, level: int, *, seed: int = 0, num_problems: int = 2**31 - 1, max_operand: int = 9
    ) -> None:
        self.level = _check_int("level", level, 1)
        self.seed = _check_int("seed", seed, 0)
        self.num_problems = _check_int("num_problems", num_problems, 1)
        self.max_operand = _check_int("max_operand", max_operand, 1, MAX_VALUE)

    def __len__(self) -> int:
        return self.num_problems

    def expression(self, index: int) -> Expression:
        """The expression of problem ``index``.

        Raises:
            IndexError: If ``index`` is outside ``[0, len(self))``.
        """
        if not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_problems:
            raise IndexError(f"Expected a problem index in [0, {self.num_problems}), got {index!r}.")
        rng = np.random.default_rng([self.seed, self.level, self.max_operand, int(index)])
        for _ in range(_UNIFORM_TRIES):
            ops = tuple(OPERATORS[k] for k in rng.integers(len(OPERATORS), size=self.level))
            operands = tuple(int(x) for x in rng.integers(self.max_operand + 1, size=self.level + 1))
            expression = Expression(operands, ops)
            if all(0 <= step.value <= MAX_VALUE for step in solution_steps(expression)):
                return expression
        return Expression(tuple(self._operands(list(ops), rng)), ops)

    def _operands(self, ops: list[str], rng: np.random.Generator) -> list[int]:
        # The expression is a sum of signed products ("terms"). When a term starts, the running sum
        # of the finished terms fixes its cap: what a "+" term may add, or a "-" term may take away,
        # with the sum staying in [0, MAX_VALUE]. Each factor keeps the partial product under the cap.
        operands: list[int] = []
        total, sign, product, cap = 0, 1, 0, MAX_VALUE
        for k in range(self.level + 1):
            op = ops[k - 1] if k > 0 else "+"
            if op == "*":
                limit = self.max_operand if product == 0 else min(self.max_operand, cap // product)
                x = int(rng.integers(limit + 1))
                product *= x
            else:
                total += sign * product
                sign = 1 if op == "+" else -1
                cap = MAX_VALUE - total if sign > 0 else total
                x = int(rng.integers(min(self.max_operand, cap) + 1))
                product = x
            operands.append(x)
        return operands

    def problem(self, index: int) -> Problem:
        """Problem ``index``: the expression as ``question``, its value as ``reference``."""
        expression = self.expression(index)
        return Problem(
            id=f"arith-L{self.level}-s{self.seed}-m{self.max_operand}-{int(index)}",
            question=expression.text(),
            reference=str(evaluate(expression)),
            source="arithmetic",
        )

    def fingerprint(self) -> str:
        """Stable identity of the problem family (generator version included)."""
        return (
            f"arithmetic-v0:level={self.level}:seed={self.seed}:n={self.num_problems}:"
            f"max_operand={self.max_operand}"
        )

    def __repr__(self) -> str:
        return f"ArithmeticSource(level={self.level}, seed={self.seed}, max_operand={self.max_operand})"


# -- grading --------------------------------------------------------------------------------------------
def extract_answer(response: str) -> str | None:
    """The integer right after the last ``=`` of ``response`` (sign kept, leading zeros dropped).

    Returns None when there is no ``=`` or no digit follows the last one.
    """
    start = response.rfind("=") + 1
    if start == 0:
        return None
    end = start + 1 if response[start : start + 1] == "-" else start
    stop = end
    while stop < len(response) and "0" <= response[stop] <= "9":
        stop += 1
    if stop == end:
        return None
    digits = response[end:stop].lstrip("0") or "0"
    return digits if end == start or digits == "0" else "-" + digits


class ArithmeticVerifier:
    """Exact integer match of the number after the last ``=`` (1.0) against the reference (else 0.0).

    A response with no answer scores 0.0. Pure string operations, linear in the response length,
    so it is safe to grade inline (``inline_safe = True``).
    """

    inline_safe = True

    def __call__(self, response: str, reference: str) -> float:
        """Scores ``response`` against the integer ``reference``.

        Raises:
            ValueError: If ``reference`` is not an integer (the problem source is misconfigured).
        """
        ref = reference.strip()
        body = ref[1:] if ref.startswith("-") else ref
        if not (body.isascii() and body.isdigit()):
            raise ValueError(f"Expected an integer reference answer like '11', got {reference!r}.")
        return 1.0 if extract_answer(response) == extract_answer("=" + ref) else 0.0

    def __repr__(self) -> str:
        return "ArithmeticVerifier()"


# -- environments ---------------------------------------------------------------------------------------
def default_limits(level: int, max_operand: int = 9) -> tuple[int, int]:
    """``(max_prompt_tokens, max_response_tokens)`` that fit every problem of ``level``.

    The prompt holds ``level + 1`` operands of at most ``len(str(max_operand))`` digits, ``level``
    operators and ``"\\nA:"``. The response budget, ``16 * level + 32``, fits the reference solution
    (at most 12 tokens a step, then ``=`` and 3 digits and EOS: ``12 * level + 5``) plus one
    immediately corrected slip (a 12-token wrong line and a 15-token ``no`` line), with ``4 * level``
    to spare.
    """
    level = _check_int("level", level, 1)
    max_operand = _check_int("max_operand", max_operand, 1, MAX_VALUE)
    prompt = len(str(max_operand)) * (level + 1) + level + 1 + len(ANSWER_CUE)
    return prompt, 16 * level + 32


def _resolve_verifier(verifier: VerifierArg) -> VerifierArg:
    return ArithmeticVerifier() if verifier == "auto" else verifier


def _env_kwargs(
    level: int,
    seed: int,
    max_operand: int,
    num_problems: int,
    max_prompt_tokens: int | None,
    max_response_tokens: int | None,
    verifier: VerifierArg,
) -> dict[str, Any]:
    """Constructor arguments shared by the single and the vector Arithmetic env."""
    source = ArithmeticSource(level, seed=seed, num_problems=num_problems, max_operand=max_operand)
    prompt_tokens, response_tokens = default_limits(level, max_operand)
    return {
        "problems": source,
        "tokenizer": CharCodec(),
        "verifier": _resolve_verifier(verifier),
        "max_prompt_tokens": prompt_tokens if max_prompt_tokens is None else max_prompt_tokens,
        "max_response_tokens": response_tokens if max_response_tokens is None else max_response_tokens,
    }


class ArithmeticEnv(ReasoningEnv):
    """Multi-step arithmetic, written one character token at a time.

    ## Description
    Each episode is one expression such as ``3+4*2`` with ``level`` operations over integers in
    ``[0, max_operand]``. The agent writes the solution character by character; the format a
    trained policy should use (one ``a op b=c`` step per line, slips corrected with ``no ...``
    lines, a final ``=answer`` line) is in the :mod:`deepgrpo_env.arithmetic` docstring. Only the
    final answer is graded. Problems are generated from ``(level, seed, max_operand, index)``, so
    there is an effectively endless supply and snapshots restore in any env of the same config.

    ## Action Space
    ``Discrete(25)``: a :class:`CharCodec` token id (digits, ``+-*=()``, space, newline, ``:``,
    ``A``, ``n``, ``o``, and the specials ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2).

    ## Observation Space
    ``Dict`` of int64 arrays, ``W = max_prompt_tokens + max_response_tokens``: ``input_ids`` (W,)
    the prompt ``"<expression>\\nA:"``, then the response, then ``<pad>``; ``length`` (1,) valid ids;
    ``prompt_length`` (1,) where the response starts.

    ## Rewards
    0 on every step but the last; on the last, 1.0 if the integer after the last ``=`` of the
    response equals the expression's value, else 0.0 (:class:`ArithmeticVerifier`).

    ## Starting State
    Problem index drawn uniformly with the env's generator, or ``reset(options={"problem_index": i})``;
    the response is empty.

    ## Episode End
    ``terminated`` when ``<eos>`` is emitted; ``truncated`` when the response reaches
    ``max_response_tokens``. The final ``info`` carries the keys of
    :class:`~deepgrpo_env.env.ReasoningEnv` (``response``, ``reference``, ``score``, ...).

    ## Arguments
    - ``level``: number of operations per problem (difficulty), >= 1.
    - ``seed``: the problem-family seed (which expressions exist); reset seeds only pick among them.
    - ``max_operand``: largest operand in an expression (answers and intermediates stay in [0, 999]).
    - ``num_problems``: size of the problem index space.
    - ``max_prompt_tokens``, ``max_response_tokens``: default to :func:`default_limits` of the level.
    - ``verifier``: ``"auto"`` (:class:`ArithmeticVerifier`), another callable, or None (no grading).
    - ``prompt``: the :class:`PromptTemplate`; default :data:`PROMPT`.
    - ``grade_timeout``, ``render_mode``: as in :class:`~deepgrpo_env.env.ReasoningEnv`.

    ## Version History
    - v0: initial version.
    """

    def __init__(
        self,
        level: int = 1,
        *,
        seed: int = 0,
        max_operand: int = 9,
        num_problems: int = 2**31 - 1,
        max_prompt_tokens: int | None = None,
        max_response_tokens: int | None = None,
        verifier: VerifierArg = "auto",
        prompt: PromptTemplate | str = PROMPT,
        grade_timeout: float = 5.0,
        render_mode: str | None = None,
    ) -> None:
        shared = _env_kwargs(level, seed, max_operand, num_problems, max_prompt_tokens, max_response_tokens, verifier)
        super().__init__(prompt=prompt, grade_timeout=grade_timeout, render_mode=render_mode, **shared)
        self.level = level


class ArithmeticVectorEnv(ReasoningVectorEnv):
    """``num_envs`` :class:`ArithmeticEnv` episodes stepped together in numpy.

    Same arguments as :class:`ArithmeticEnv` plus ``num_envs``, ``autoreset_mode``, ``copy`` and
    ``grade_workers`` (see :class:`~deepgrpo_env.vector.ReasoningVectorEnv` for their meaning and
    for the batched ``snapshot``/``reset_to`` by index).
    """

    def __init__(
        self,
        num_envs: int = 1,
        level: int = 1,
        *,
        seed: int = 0,
        max_operand: int = 9,
        num_problems: int = 2**31 - 1,
        max_prompt_tokens: int | None = None,
        max_response_tokens: int | None = None,
        verifier: VerifierArg = "auto",
        prompt: PromptTemplate | str = PROMPT,
        grade_timeout: float = 5.0,
        grade_workers: int = 1,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        render_mode: str | None = None,
    ) -> None:
        shared = _env_kwargs(level, seed, max_operand, num_problems, max_prompt_tokens, max_response_tokens, verifier)
        super().__init__(
            num_envs,
            prompt=prompt,
            grade_timeout=grade_timeout,
            **shared,
            grade_workers=grade_workers,
            autoreset_mode=autoreset_mode,
            copy=copy,
            render_mode=render_mode,
        )
        self.level = level


__all__ = [
    "ANSWER_CUE",
    "MAX_VALUE",
    "PROMPT",
    "RETRACT",
    "ArithmeticEnv",
    "ArithmeticSource",
    "ArithmeticVectorEnv",
    "ArithmeticVerifier",
    "CharCodec",
    "Expression",
    "Step",
    "corrupt_solution",
    "default_limits",
    "evaluate",
    "extract_answer",
    "next_step",
    "parse_expression",
    "rewrite",
    "solution_steps",
    "solution_text",
]
