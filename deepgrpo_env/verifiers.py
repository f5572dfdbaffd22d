"""Answer verifiers: score a response against a reference answer (1.0 right, 0.0 wrong, None unscorable).

A verifier is any callable ``(response, reference) -> float | None``. ``0.0`` means wrong (including
"no answer found"), ``None`` means the pair cannot be scored (the reference itself is unusable), and an
exception is a bug in the verifier that must reach the caller. An optional ``inline_safe`` attribute
tells :class:`~deepgrpo_env.grading.Grader` whether the verifier may run in the caller's process:
only verifiers whose running time is bounded by construction (linear-time string work on bounded
input) should set it. Everything else runs in worker processes with a hard timeout.

Model output is untrusted: nothing here evaluates response text as code. See :class:`MathVerifier`
for what math-verify does with it.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["AnswerKind", "MathVerifier", "NumericVerifier", "Verifier", "normalize_digits", "verifier_for"]

AnswerKind = Literal["numeric", "math"]


@runtime_checkable
class Verifier(Protocol):
    """Scores one response against one reference answer.

    Returns a float (1.0 right, 0.0 wrong; other values are passed through unchanged) or None when the
    pair cannot be scored. Raising means the verifier has a bug: graders propagate it.
    """

    def __call__(self, response: str, reference: str, /) -> float | None: ...


def _tail(text: str, max_chars: int) -> str:
    # The final answer sits at the end of a response, so an overlong response keeps its tail.
    return text if len(text) <= max_chars else text[-max_chars:]


def _check_max_chars(max_chars: int) -> None:
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
        raise ValueError(f"Expected `max_chars` to be an int >= 1, got {max_chars!r}.")


# -- text normalization (both verifiers) -------------------------------------------------------------------
def normalize_digits(text: str) -> str:
    """``text`` with every Unicode decimal digit as its ASCII digit and fullwidth ASCII forms as ASCII.

    ``"１２"`` becomes ``"12"`` and ``"１，０００．５"`` becomes ``"1,000.5"`` (NFKC applied to the fullwidth
    block U+FF01-U+FF5E only), while superscripts such as ``"²"`` are kept: NFKC would turn ``"2³"``
    into ``"23"``. Linear time; ASCII text is returned unchanged.
    """
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        digit = unicodedata.decimal(ch, None)
        if digit is not None:
            out.append(str(digit))
        elif "\uff01" <= ch <= "\uff5e":
            out.append(unicodedata.normalize("NFKC", ch))
        elif ch == "\u3000":  # ideographic space
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


# LaTeX thousands separators between digit groups: "1,\!000", "14{,}916", "1\,000".
_LATEX_THOUSANDS_RE = re.compile(r"(?<=[0-9])(?:,\\!|\{,\}|\\,)(?=[0-9]{3}(?![0-9]))")


def _plain_thousands(text: str) -> str:
    """LaTeX thousands separators as plain commas (``"1,\\!000"`` -> ``"1,000"``); linear time."""
    return _LATEX_THOUSANDS_RE.sub(",", text) if "," in text or "\\," in text else text


# -- numeric ----------------------------------------------------------------------------------------------
# A number: optional minus (not when it follows a word character or ")", so "3-5" is 3 then 5), then
# either comma-grouped thousands ("1,000,000") or plain digits, an optional decimal part, or ".5".
# No lookahead after the digit groups and no nested quantifiers over the same characters: every
# attempt that fails does so within a few characters, and a match consumes all it scanned, so
# scanning is linear in the input length.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)])(?P<sign>[-\u2212]))?"
    r"(?P<body>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)",
    re.ASCII,
)


def _to_decimal(match: re.Match[str]) -> Decimal:
    value = Decimal(match.group("body").replace(",", ""))
    return -value if match.group("sign") else value


def last_number(text: str) -> Decimal | None:
    """The last number written in ``text`` as an exact :class:`~decimal.Decimal`, or None if there is none.

    Thousands separators are dropped (``"1,000"`` is 1000), a minus sign counts unless it follows a
    word character or ``)`` (``"3-5"`` ends with 5, ``"x = -5"`` with -5), and currency symbols, units
    and percent signs around the number are ignored (``"$18.00"`` is 18.00).
    """
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007  (only the final match is wanted)
        pass
    return None if last is None else _to_decimal(last)


def _numbers_equal(a: Decimal, b: Decimal, rel_tol: float) -> bool:
    if a == b:
        return True
    if a == a.to_integral_value() and b == b.to_integral_value():
        # Two integers are equal only exactly: a relative tolerance would call 10**7 and 10**7 + 1 equal.
        return False
    with localcontext() as ctx:
        # Enough digits that the difference of two long decimals is not rounded away.
        ctx.prec = max(28, len(a.as_tuple().digits), len(b.as_tuple().digits)) + 2
        return abs(a - b) <= Decimal(repr(rel_tol)) * max(abs(a), abs(b))


def _numeric_text(text: str, max_chars: int) -> str:
    # Tail first (bounded work), with a little slack so a separator cut at the edge still reads.
    return _plain_thousands(normalize_digits(_tail(text, max_chars + 8)))[-max_chars:]


class NumericVerifier:
    """Strict last-number match, as the DEEP-GRPO paper grades GSM8K.

    The score is 1.0 when the last number in the response equals the reference number, else 0.0
    (also when the response contains no number). ``"1,000"``, ``"$1,000.00"`` and ``"#### 1000"``
    all read as 1000. Two integers must match exactly; when either side has a fractional part they
    match within ``rel_tol``. Scientific notation and fractions are not read (``"1/2"`` ends with 2).

    The reference must hold exactly one number (``"72"``, ``"$18"``, ``"-3.5"``, ``"1,000"``);
    otherwise the pair is unscorable (None): use :class:`MathVerifier` for symbolic references.

    Responses longer than ``max_chars`` characters are cut to their last ``max_chars`` characters
    before reading. Scanning is a single linear-time regular expression over bounded input, so the
    verifier is ``inline_safe`` (it can run in the caller's process without a timeout).

    Args:
        rel_tol: Relative tolerance for non-integer answers.
        max_chars: Longest response tail that is read.
    """

    inline_safe: bool = True

    def __init__(self, *, rel_tol: float = 1e-6, max_chars: int = 20_000) -> None:
        if isinstance(rel_tol, bool) or not isinstance(rel_tol, (int, float)) or not 0 <= rel_tol < 1:
            raise ValueError(f"Expected `rel_tol` in [0, 1), got {rel_tol!r}; 1e-6 suits most datasets.")
        _check_max_chars(max_chars)
        self.rel_tol = float(rel_tol)
        self.max_chars = max_chars

    def __call__(self, response: str, reference: str) -> float | None:
        """Scores ``response`` against ``reference``: 1.0, 0.0, or None if the reference is not one number.

        Both sides are normalized first: Unicode digits (fullwidth ``１２``) read as ASCII and LaTeX
        thousands separators (``1,\\!000``, ``14{,}916``, ``1\\,000``) as commas. Bounded by
        construction (linear-time scans of at most ``max_chars`` characters), so direct calls need no
        timeout.
        """
        ref_numbers = list(_NUMBER_RE.finditer(_numeric_text(reference, self.max_chars)))
        if len(ref_numbers) != 1:
            return None
        answer = last_number(_numeric_text(response, self.max_chars))
        if answer is None:
            return 0.0
        return 1.0 if _numbers_equal(answer, _to_decimal(ref_numbers[0]), self.rel_tol) else 0.0

    def __repr__(self) -> str:
        return f"NumericVerifier(rel_tol={self.rel_tol}, max_chars={self.max_chars})"


# -- math-verify --------------------------------------------------------------------------------------------
# An unescaped "$", "\(", "\[" or "\boxed": "\$40" is a currency sign, not a delimiter.
_LATEX_DELIMITER_RE = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")


class _DropTimeoutDisabledWarning(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning: our grader enforces the timeout itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


@functools.cache
def _math_verify() -> Any:
    """Imports math-verify on first use (about half a second), so other verifiers' workers skip it."""
    try:
        import math_verify
    except ImportError as e:  # pragma: no cover - math-verify is a declared dependency
        raise ImportError("MathVerifier needs math-verify: `pip install 'math-verify>=0.8'`.") from e
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
    return math_verify


def _math_text(text: str) -> str:
    """Normalization both sides get before math-verify: ASCII digits, LaTeX thousands separators removed.

    math-verify reads ``1,\\!000`` at the top level but not inside ``\\frac{12}{5,\\!525}``, so the
    separators are dropped wherever they sit between digit groups.
    """
    return _LATEX_THOUSANDS_RE.sub("", normalize_digits(text))


def _strip_sentence_period(text: str) -> str:
    """``"\\frac{7}{5} + \\frac{1}{5} i."`` -> without the final period (not an ellipsis ``...``)."""
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


# What math-verify legitimately drops from an answer (units in \\text{}/\\mbox{}, currency and percent
# signs, degree marks, spacing) and so must not make a whole answer look like a fragment.
_SQUEEZE_RE = re.compile(
    r"\\(?:text|mbox|mathrm|textrm|textbf)\s*\{[^{}]*\}(?:\^\{?[0-9]\}?)?"
    r"|\^\s*\{?\\circ\}?|\\circ|\\\$|\\%|\\[!,;:]|\\(?:q?quad|displaystyle)|[\s,$%]"
)


def _fragment(extracted: str, text: str) -> bool:
    """Whether math-verify's extracted string is only a part of ``text`` (a strict piece of it).

    Spaces, commas, ``$`` and percent signs are ignored; an extracted string that math-verify
    rewrote (``\\dfrac`` as ``\\frac``) is not a piece of the text and counts as whole.
    """
    piece = _SQUEEZE_RE.sub("", extracted)
    whole = _SQUEEZE_RE.sub("", _strip_sentence_period(text))
    if whole.startswith(piece) and whole[len(piece) :].isalpha():
        return False  # a trailing unit word math-verify drops by design ("4t" read as 4 tonnes)
    return piece != whole and piece in whole


@functools.lru_cache(maxsize=4096)
def _parse_gold(reference: str) -> tuple[Any, ...]:
    """The parsed reference, or empty when it cannot be parsed *whole*; cached (a group shares one).

    A reference that math-verify reads only in part (``"\\frac{7}{5} + \\frac{1}{5} i."`` read as
    ``1/5``) is unscorable, never a fragment: grading against a fragment rewards wrong answers.
    """
    mv = _math_verify()
    configs = [mv.LatexExtractionConfig(), mv.ExprExtractionConfig()]
    text = _math_text(reference.strip())
    if not text:
        return ()
    if _LATEX_DELIMITER_RE.search(text):
        candidates = [text]
    else:
        # math-verify reads LaTeX only inside delimiters, so a bare "\frac{1}{2}" is wrapped; a final
        # sentence period would stop it parsing, so it is dropped.
        candidates = [f"${_strip_sentence_period(text)}$"]
        if "\\" not in text and "{" not in text:
            candidates.append(text)  # a plain number or expression ("1,000", "2/3")
    for candidate in candidates:
        # parsing_timeout=None: math-verify would otherwise install a SIGALRM handler, which only works
        # on the main thread; the grader's worker processes enforce the time limit instead.
        parsed = mv.parse(candidate, configs, fallback_mode="first_match", parsing_timeout=None)
        if len(parsed) < 2:
            continue
        if _fragment(str(parsed[-1]), candidate):
            return ()  # math-verify read only part of the reference: unscorable, not a fragment
        return (parsed[0],)
    return ()


class MathVerifier:
    """Symbolic equivalence with `math-verify <https://github.com/huggingface/Math-Verify>`_.

    The reference is parsed as LaTeX (wrapped in ``$…$`` when it has no delimiters, so ``"\\frac{1}{2}"``
    works) or as a plain number/expression. The response's answer is its last ``\\boxed{}`` when it has
    one (several boxes at the end are merged into a set, math-verify's convention), else the last
    LaTeX span; with ``numeric_fallback`` also a plain number or arithmetic expression such as
    ``"The answer is 72."``. Then ``verify(gold, prediction)`` decides, gold first (it is asymmetric).

    Semantics follow math-verify: numerically equal forms match (``\\frac{1}{2}`` and ``0.5``,
    ``\\dfrac12`` and ``\\frac{1}{2}``), a percentage matches its value with or without the percent
    (``10\\%``, ``10`` and ``0.1``), intervals must agree on open/closed ends, sets ignore order.

    Returns 1.0 or 0.0, and None when the reference cannot be parsed. A response with no extractable
    answer scores 0.0. Responses longer than ``max_chars`` keep only their last ``max_chars``
    characters (the answer is at the end; an overlong response is otherwise a cheap way to make
    parsing slow).

    Safety: math-verify turns LaTeX into SymPy with an ANTLR parser (no ``eval``). Its plain-expression
    path does call SymPy's ``parse_expr`` (which evaluates Python), but only on text its regular
    expression restricts to digits, ``.``, whitespace and ``+ - * × / ÷ ^ ( )``: with no letters or
    underscores there are no names to look up, so no code can run. What remains is cost:
    ``9^{9^{9^9}}`` or ``(10^{10})!`` make SymPy compute for minutes, which is why this verifier is
    not ``inline_safe`` and must run in :class:`~deepgrpo_env.grading.Grader`'s worker processes.

    Calling it directly (``MathVerifier()(response, reference)``) is bounded too: the call runs in a
    grading worker kept for the process and raises :class:`~deepgrpo_env.grading.VerifierTimeout`
    after ``timeout`` seconds, from any thread or process. :class:`~deepgrpo_env.grading.Grader` runs
    the unbounded :meth:`compute` under its own timeout instead (a timeout is then a ``Grade``).

    Args:
        numeric_fallback: Also accept answers written as plain numbers or arithmetic outside LaTeX.
        max_chars: Longest response tail that is parsed.
        timeout: Seconds a direct call may take before it raises ``VerifierTimeout``.
    """

    inline_safe: bool = False

    def __init__(self, *, numeric_fallback: bool = True, max_chars: int = 20_000, timeout: float = 5.0) -> None:
        _check_max_chars(max_chars)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
            raise ValueError(f"Expected `timeout` a finite number of seconds > 0, got {timeout!r}.")
        self.numeric_fallback = bool(numeric_fallback)
        self.max_chars = max_chars
        self.timeout = float(timeout)

    def warmup(self) -> None:
        """Imports math-verify and grades one trivial answer (compiling its regular expressions).

        Grading workers call this once before their first timed task, so the first real grade is
        not slowed by a second of imports.
        """
        self.compute("\\boxed{1}", "1")

    def _prediction_configs(self) -> Sequence[Any]:
        mv = _math_verify()
        # Priority 0 makes a \boxed{} answer win over any other LaTeX in the response.
        configs: list[Any] = [mv.LatexExtractionConfig(boxed_match_priority=0)]
        if self.numeric_fallback:
            configs.append(mv.ExprExtractionConfig())
        return configs

    def __call__(self, response: str, reference: str) -> float | None:
        """Scores ``response`` against ``reference``: 1.0, 0.0, or None if the reference cannot be parsed.

        Bounded: runs :meth:`compute` in a grading worker with a hard ``timeout``.

        Raises:
            VerifierTimeout: If scoring took longer than ``timeout`` seconds.
        """
        from deepgrpo_env.grading import bounded_call

        key = (type(self), self.numeric_fallback, self.max_chars, self.timeout)
        return bounded_call(self, response, reference, self.timeout, key)

    def compute(self, response: str, reference: str) -> float | None:
        """The score computed in this thread with no time limit (what grading workers run).

        Only for callers that bound the time themselves: a costly answer can make this run for hours.
        """
        gold = _parse_gold(reference)
        if not gold:
            return None
        mv = _math_verify()
        prediction = mv.parse(
            _math_text(_tail(response, self.max_chars)),
            self._prediction_configs(),
            fallback_mode="no_fallback",
            parsing_timeout=None,  # see _parse_gold: the grader's worker enforces the time limit
        )
        if not prediction:
            return 0.0
        return 1.0 if mv.verify(list(gold), prediction, timeout_seconds=None) else 0.0

    def __repr__(self) -> str:
        return (
            f"MathVerifier(numeric_fallback={self.numeric_fallback}, max_chars={self.max_chars}, "
            f"timeout={self.timeout:g})"
        )


def verifier_for(answer_kind: AnswerKind) -> Verifier:
    """The default verifier for a dataset's answer kind.

    Args:
        answer_kind: ``"numeric"`` (every reference is a number: :class:`NumericVerifier`) or
            ``"math"`` (LaTeX references: :class:`MathVerifier`).

    Raises:
        ValueError: If ``answer_kind`` is neither.
    """
    if answer_kind == "numeric":
        return NumericVerifier()
    if answer_kind == "math":
        return MathVerifier()
    raise ValueError(f"Expected `answer_kind` 'numeric' or 'math', got {answer_kind!r}.")
