"""Tests for the built-in verifiers: numeric last-number matching, math-verify equivalence, hostile input."""

from __future__ import annotations

import pickle
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepgrpo_env.grading import Grader
from deepgrpo_env.verifiers import MathVerifier, NumericVerifier, Verifier, last_number, verifier_for

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def math_grader() -> Iterator[Grader]:
    grader = Grader(MathVerifier(), timeout=TIMEOUT, num_workers=1)
    grader.start()
    yield grader
    grader.close()


# -- NumericVerifier ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("The answer is 72.", "72", 1.0),
        ("#### 1,000", "1000", 1.0),
        ("so she pays $18.00", "18", 1.0),
        ("18.0", "18", 1.0),
        ("It costs 1,234,567 dollars", "1234567", 1.0),
        ("3 then 5", "3", 0.0),
        ("3 then 5", "5", 1.0),
        ("no number here", "3", 0.0),
        ("", "3", 0.0),
        ("the temperature is -5 degrees", "-5", 1.0),
        ("x = -5", "5", 0.0),
        ("from 3-5", "5", 1.0),  # a hyphen after a digit is not a minus sign
        ("\u22124", "-4", 1.0),  # Unicode minus
        ("-.5", "-0.5", 1.0),
        ("0.33333334", "0.3333333", 1.0),  # within rel_tol 1e-6
        ("0.334", "0.333", 0.0),
        ("10000001", "10000000", 0.0),  # integers compare exactly, never with a tolerance
        ("the answer is 12", "$12", 1.0),
        ("about 50%", "50", 1.0),
    ],
)
def test_numeric_verifier(response: str, reference: str, expected: float) -> None:
    assert NumericVerifier()(response, reference) == expected


@pytest.mark.parametrize("reference", ["", "no number", "3/4", "1 or 2"])
def test_numeric_unscorable_reference(reference: str) -> None:
    assert NumericVerifier()("the answer is 3", reference) is None


def test_numeric_tolerance_is_configurable() -> None:
    assert NumericVerifier(rel_tol=0.01)("3.14", "3.1416") == 1.0
    assert NumericVerifier(rel_tol=0.0)("3.14", "3.1416") == 0.0


def test_numeric_keeps_only_the_tail() -> None:
    v = NumericVerifier(max_chars=10)
    assert v("42 " + "x" * 20, "42") == 0.0  # the number was cut off with the head
    assert v("x" * 20 + " 42", "42") == 1.0


def test_last_number_parses_exactly() -> None:
    assert last_number("a 1,000,000.50 b") == pytest.approx(1000000.5)
    assert str(last_number("9" * 50)) == "9" * 50  # no float rounding of long integers
    assert last_number("nothing") is None


@pytest.mark.parametrize(
    "text", ["1,000" * 4000, "-" * 20_000, "1." * 10_000, "9" * 20_000, "x" * 100_000, "1,000,000," * 2000]
)
def test_numeric_is_fast_on_hostile_input(text: str) -> None:
    start = time.perf_counter()
    NumericVerifier()(text, "1.5")
    assert time.perf_counter() - start < 0.5


def test_numeric_validates_arguments() -> None:
    with pytest.raises(ValueError, match="rel_tol"):
        NumericVerifier(rel_tol=-1.0)
    with pytest.raises(ValueError, match="max_chars"):
        NumericVerifier(max_chars=0)


# -- MathVerifier (in-process, benign input only) ---------------------------------------------------------
@pytest.mark.parametrize(
    ("response", "reference", "expected"),
    [
        ("so \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),  # math-verify compares numerically: 1/2 == 0.5
        ("\\boxed{0.5}", "50", 0.0),  # ... but is not lenient about scale
        ("\\boxed{2}", "2", 1.0),
        ("\\boxed{3}", "2", 0.0),
        ("The answer is $\\frac12$.", "\\frac{1}{2}", 1.0),
        ("The answer is 72.", "72", 1.0),  # numeric_fallback reads plain numbers
        ("first $x=3$, finally \\boxed{5}", "5", 1.0),  # the box wins over earlier LaTeX
        ("\\boxed{(1,2]}", "(1,2]", 1.0),
        ("\\boxed{(1,2)}", "(1,2]", 0.0),  # interval ends matter
        ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),  # set order does not
        ("\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1.0),
        ("\\boxed{x^2+1}", "1+x^2", 1.0),
        ("\\boxed{\\$40}", "\\$40", 1.0),
        ("no answer at all", "7", 0.0),  # nothing extractable is wrong, not unscorable
    ],
)
def test_math_verifier(response: str, reference: str, expected: float) -> None:
    assert MathVerifier()(response, reference) == expected


def test_math_without_numeric_fallback_needs_latex() -> None:
    v = MathVerifier(numeric_fallback=False)
    assert v("The answer is 72.", "72") == 0.0
    assert v("The answer is $72$.", "72") == 1.0


@pytest.mark.parametrize("reference", ["", "   ", "\\frac{", "}"])
def test_math_unparsable_reference_is_unscorable(reference: str) -> None:
    assert MathVerifier()("\\boxed{1}", reference) is None


def test_math_keeps_only_the_tail() -> None:
    v = MathVerifier(max_chars=50)
    assert v("\\boxed{7}" + " filler" * 20, "7") == 0.0
    assert v(" filler" * 20 + "\\boxed{7}", "7") == 1.0


# -- shared --------------------------------------------------------------------------------------------------
def test_verifier_for() -> None:
    assert isinstance(verifier_for("numeric"), NumericVerifier)
    assert isinstance(verifier_for("math"), MathVerifier)
    with pytest.raises(ValueError, match="answer_kind"):
        verifier_for("text")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "verifier", [NumericVerifier(rel_tol=1e-3, max_chars=99), MathVerifier(numeric_fallback=False)]
)
def test_verifiers_pickle_and_declare_inline_safety(verifier: Verifier) -> None:
    clone = pickle.loads(pickle.dumps(verifier))
    assert repr(clone) == repr(verifier)
    assert isinstance(clone, Verifier)
    assert clone.inline_safe is isinstance(verifier, NumericVerifier)  # type: ignore[attr-defined]


# -- hostile input through the grading pool --------------------------------------------------------------
HOSTILE = {
    "tower": "\\boxed{9^{9^{9^{9}}}}",
    "python-pow": "10**10**10",
    "factorial": "\\boxed{(10^{10})!}",
    "long-digits": "1" * 100_000,
    "long-letters": "x" * 100_000,
    "open-braces": "{" * 50_000,
    "open-box": "\\boxed{" + "{" * 50_000,
    "dollars": "$" * 100_000,
    "many-boxes": "\\boxed{1}" * 20_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_math_hostile_input_never_hangs(math_grader: Grader, name: str) -> None:
    math_grader.start()  # a worker killed by the previous case restarts outside the timed window
    start = time.perf_counter()
    grade = math_grader.grade(HOSTILE[name], "5")
    elapsed = time.perf_counter() - start
    assert elapsed < TIMEOUT + 3.0
    assert grade.status == "timeout" or grade.score in (0.0, None)
    assert grade.score != 1.0


def _code_injections(marker: Path) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f"\\boxed{{{touch}}}",
        f"The answer is {touch}",
        f"answer: {touch}",
        f"$ {touch} $",
        f'\\boxed{{exec("{touch}")}}',
        f'answer: eval("{touch}")',
        f"\\boxed{{(lambda: {touch})()}}",
        f"final answer is 1+{touch}",
        f"answer: 1 + ({touch})",
    ]


def test_math_verify_only_evaluates_letter_free_text(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # math-verify's plain-expression path hands text to SymPy's parse_expr (which runs eval). It is
    # safe only while its regex admits no letters or underscores; this catches a release that widens it.
    import math_verify.parser as mvp

    seen: list[str] = []
    real_parse_expr = mvp.parse_expr

    def spy(text: str, *args: object, **kwargs: object) -> object:
        seen.append(text)
        return real_parse_expr(text, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mvp, "parse_expr", spy)
    mvp.parse_expr_cached.cache_clear()
    texts = [*_code_injections(tmp_path / "PWNED"), "answer: 1/2", "so 3 * (4 + 5) = 27", "2^10 and 1+1"]
    for text in texts:
        MathVerifier().compute(text, "-987654")
    assert any("1/2" in t for t in seen)  # the spy is on the path that evaluates
    assert all(re.fullmatch(r"[0-9.\s+\-*×/^()÷]*", t) for t in seen), seen
    assert not (tmp_path / "PWNED").exists()


def test_model_text_is_never_executed(math_grader: Grader, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    for text in _code_injections(marker):
        # References that no digit of the marker's path can match by accident.
        for grade in math_grader.grade_many([(text, "-987654"), (text, "\\frac{7}{13}")]):
            assert grade.score in (0.0, None) or grade.status == "timeout"
        assert NumericVerifier()(text, "-987654") == 0.0
    assert not marker.exists()
