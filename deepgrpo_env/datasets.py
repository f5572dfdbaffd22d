"""Built-in reasoning datasets and loaders that turn any record into a :class:`Problem`.

The built-in datasets are vendored under ``deepgrpo_env/data/<name>/`` (see the README there for
sources, licenses and row counts) and read through :mod:`importlib.resources`, so loading works from
an installed wheel and never touches the network. Each dataset has its own normalizer because every
source spells its question and final answer differently; user data goes through one generic path
(:func:`load_jsonl`, :func:`problems_from_records`).

Example:
    >>> from deepgrpo_env.datasets import load_dataset
    >>> load_dataset("gsm8k", "train")[0].reference
    '72'
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from deepgrpo_env.problems import Problem

AnswerKind = Literal["numeric", "math"]
"""Which verifier suits a dataset's references: plain numbers or LaTeX math expressions."""

# (question, reference, stable id or None) extracted from one raw record.
_Normalized = tuple[str, str, str | None]


@dataclass(frozen=True)
class DatasetInfo:
    """What a built-in dataset offers.

    Attributes:
        name: Registry name, as passed to :func:`load_dataset` (``"gsm8k"``).
        splits: The splits that ship with the package (``("train", "test")``).
        description: One line on what the problems are.
        answer_kind: ``"numeric"`` when every reference is a number, ``"math"`` when references are
            LaTeX expressions that need a symbolic verifier.
        license: License of the vendored file and its holders; the full text is in
            ``deepgrpo_env/data/<name>/LICENSE``.
        subsets: Problem kinds a split can be restricted to (``load_dataset(name, split,
            subset=...)``, or ``"name:split:subset"``), from a field of the vendored records: MAWPS's
            ``type`` (``"singleop"`` one-operation problems, ...). Empty for datasets without one.
    """

    name: str
    splits: tuple[str, ...]
    description: str
    answer_kind: AnswerKind
    license: str
    subsets: tuple[str, ...] = ()

    @property
    def default_split(self) -> str:
        """The split a bare dataset name stands for: ``"train"`` if shipped, else the first split."""
        return "train" if "train" in self.splits else self.splits[0]


# --------------------------------------------------------------------------------------------------
# Answer extraction and normalization
# --------------------------------------------------------------------------------------------------

# `(?![A-Za-z])` keeps longer macros such as `\boxedtext` from matching.
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_INTEGER = re.compile(r"[+-]?\d+")


def extract_last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, or ``None``.

    Braces are matched with a depth counter, so nested groups such as ``\\boxed{\\frac{1}{2}}`` come
    back whole (``"\\frac{1}{2}"``); escaped braces (``\\{``, ``\\}``) do not count. The brace-less
    form ``\\boxed 5`` yields the token after the space (up to whitespace, ``$`` or ``}``, without a
    trailing ``.``, ``,`` or ``;``). The content is stripped of surrounding whitespace.

    Only the last box command counts: if it is malformed (an unclosed brace, nothing after it) the
    result is ``None`` rather than an earlier box, because a truncated final answer is no answer.
    Runs in time linear in ``len(text)``.

    Args:
        text: A solution or model response.

    Returns:
        The boxed content, ``None`` if there is no well-formed final box.
    """
    last = None
    for match in _BOX_COMMAND.finditer(text):
        last = match
    if last is None:
        return None
    start = last.end()
    pos = start
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos < len(text) and text[pos] == "{":
        return _braced_group(text, pos)
    if pos == start:
        return None
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in "$}":
        end += 1
    token = text[pos:end].rstrip(".,;")
    return token or None


def _braced_group(text: str, open_pos: int) -> str | None:
    """Content of the brace group opening at ``open_pos``, ``None`` if it never closes."""
    depth = 0
    pos = open_pos
    while pos < len(text):
        char = text[pos]
        if char == "\\":
            # An escaped character (`\{`, `\}`, `\\`) is never a group delimiter.
            pos += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_pos + 1 : pos].strip()
        pos += 1
    return None


def _number_text(value: int | float) -> str:
    """A JSON number as a plain decimal string: ``27.0 -> "27"``, ``1.84 -> "1.84"``, no exponent."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number or a string as the answer, got the boolean {value}")
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number as the answer, got {value}")
    if value.is_integer():
        return str(int(value))
    # repr is the shortest round-tripping form; Decimal turns a possible exponent into digits.
    return format(Decimal(repr(value)), "f")


def _answer_text(value: Any) -> str:
    """A raw answer field (string or JSON number) as a reference string."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)):
        return _number_text(value)
    raise ValueError(f"expected the answer to be a string or a number, got {type(value).__name__}")


def _canonical_integer(text: str) -> str:
    """``"025" -> "25"``; text that is not a plain integer is returned unchanged."""
    return str(int(text)) if _INTEGER.fullmatch(text) else text


def _after_hashes(solution: str) -> str:
    """The GSM8K final answer: text after the last ``####``, without thousands separators."""
    if "####" not in solution:
        raise ValueError("expected the answer to end with '#### <number>', found no '####'")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


# --------------------------------------------------------------------------------------------------
# Per-dataset normalizers (raw record -> question, reference, stable id)
# --------------------------------------------------------------------------------------------------


def _field(record: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present in ``record``; a ValueError naming them all if none is."""
    for key in keys:
        if key in record:
            return record[key]
    wanted = " or ".join(repr(k) for k in keys)
    raise ValueError(f"missing key {wanted} (record has keys {sorted(record)})")


def _text_field(record: Mapping[str, Any], *keys: str) -> str:
    value = _field(record, *keys)
    if not isinstance(value, str):
        raise ValueError(f"expected {keys[0]!r} to be a string, got {type(value).__name__}")
    return value


def _gsm8k(record: Mapping[str, Any]) -> _Normalized:
    return _text_field(record, "question"), _after_hashes(_text_field(record, "answer")), None


def _final_period(text: str) -> str:
    """A boxed answer without the sentence period some MATH solutions put inside the box.

    ``math-test-2269`` boxes ``\\frac{7}{5} + \\frac{1}{5} i.``; the period is not part of the answer
    (an ellipsis ``\\ldots`` or ``...`` is kept).
    """
    return text[:-1].rstrip() if text.endswith(".") and not text.endswith("..") else text


def _math(record: Mapping[str, Any]) -> _Normalized:
    solution = _text_field(record, "solution")
    boxed = extract_last_boxed(solution)
    if boxed is None:
        raise ValueError("found no well-formed \\boxed{...} in 'solution'")
    return _text_field(record, "problem"), _final_period(boxed), None


def _math500(record: Mapping[str, Any]) -> _Normalized:
    question, reference, _ = _math(record)
    # The curated `answer` field is authoritative; the boxed solution is only a fallback.
    answer = record.get("answer")
    if isinstance(answer, str) and answer.strip():
        reference = _final_period(answer.strip())
    unique_id = record.get("unique_id")
    return question, reference, unique_id if isinstance(unique_id, str) else None


def _competition(record: Mapping[str, Any]) -> _Normalized:
    question = _text_field(record, "problem", "question")
    reference = _canonical_integer(_answer_text(_field(record, "answer")))
    raw_id = record.get("id")
    return question, reference, None if raw_id is None else str(raw_id)


def _svamp(record: Mapping[str, Any]) -> _Normalized:
    body = _text_field(record, "Body").strip()
    question = _text_field(record, "Question").strip()
    # Many SVAMP bodies are a dangling clause ("If he has 14 tickets left"); end it as a sentence.
    joiner = " " if not body or body[-1] in ".!?,;:" else ". "
    raw_id = record.get("ID")
    stable_id = None if raw_id is None else str(raw_id)
    return body + joiner + question, _answer_text(_field(record, "Answer")), stable_id


def _mawps(record: Mapping[str, Any]) -> _Normalized:
    return _text_field(record, "input"), _answer_text(_field(record, "target")), None


@dataclass(frozen=True)
class _Spec:
    info: DatasetInfo
    normalize: Callable[[Mapping[str, Any]], _Normalized]
    subset_field: str | None = None  # the record field naming a problem's subset (DatasetInfo.subsets)


_SPECS: dict[str, _Spec] = {
    spec.info.name: spec
    for spec in (
        _Spec(
            DatasetInfo(
                "gsm8k",
                ("train", "test"),
                "Grade-school math word problems (Cobbe et al., 2021).",
                "numeric",
                "MIT (OpenAI, 2021)",
            ),
            _gsm8k,
        ),
        _Spec(
            DatasetInfo(
                "math",
                ("test",),
                "MATH competition problems, all 5,000 test items (Hendrycks et al., 2021).",
                "math",
                "MIT (Dan Hendrycks, 2021; file via math-evaluation-harness, Zhibin Gou, 2024)",
            ),
            _math,
        ),
        _Spec(
            DatasetInfo(
                "math500",
                ("test",),
                "MATH-500, the 500-problem MATH test subset of Lightman et al. (2023).",
                "math",
                "MIT (OpenAI prm800k, 2023; MATH by Dan Hendrycks, 2021; via Zhibin Gou, 2024)",
            ),
            _math500,
        ),
        _Spec(
            DatasetInfo(
                "aime24",
                ("test",),
                "AIME 2024 I and II, 30 problems with integer answers in [0, 999].",
                "numeric",
                "MIT (math-evaluation-harness, Zhibin Gou, 2024)",
            ),
            _competition,
        ),
        _Spec(
            DatasetInfo(
                "amc23",
                ("test",),
                "AMC 12 2023, 40 problems with numeric answers.",
                "numeric",
                "MIT (math-evaluation-harness, Zhibin Gou, 2024)",
            ),
            _competition,
        ),
        _Spec(
            DatasetInfo(
                "svamp",
                ("test",),
                "SVAMP arithmetic word problems with varied structure (Patel et al., 2021).",
                "numeric",
                "MIT (Arkil Patel, 2021; file via Qwen2.5-Math evaluation, Zhibin Gou, 2024)",
            ),
            _svamp,
        ),
        _Spec(
            DatasetInfo(
                "mawps",
                ("test",),
                "MAWPS arithmetic word problems (Koncel-Kedziorski et al., 2016).",
                "numeric",
                "MIT (math-evaluation-harness, Zhibin Gou, 2024)",
                ("addsub", "multiarith", "singleeq", "singleop"),
            ),
            _mawps,
            "type",
        ),
    )
}

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({name: spec.info for name, spec in _SPECS.items()})
"""Built-in datasets by name (read-only)."""


# --------------------------------------------------------------------------------------------------
# Reading JSONL
# --------------------------------------------------------------------------------------------------


def _read_jsonl(resource: Traversable | Path, label: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(1-based line number, object)`` for each non-blank line of a UTF-8 JSONL file.

    Lines are read as bytes and decoded one at a time, so a byte that is not UTF-8 is reported at its
    own line and column.
    """
    with resource.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"Malformed JSONL in {label} line {line_no}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at "
                    f"column {e.start + 1}: {e.reason}). Re-encode the file as UTF-8."
                ) from e
            if line_no == 1:
                line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not part of the JSON
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"Malformed JSONL in {label} line {line_no}: invalid JSON ({e.msg} at "
                    f"column {e.colno}). Expected one JSON object per line."
                ) from e
            if not isinstance(record, dict):
                raise ValueError(
                    f"Malformed JSONL in {label} line {line_no}: expected a JSON object, got "
                    f"{type(record).__name__}. Write one {{...}} object per line."
                )
            yield line_no, record


def _checked_problem(pid: str, question: str, reference: str, source: str) -> Problem:
    """A problem with stripped text; raises ValueError on an empty question or reference."""
    question = question.strip()
    reference = reference.strip()
    if not question:
        raise ValueError("empty question")
    if not reference:
        raise ValueError("empty reference answer")
    return Problem(id=pid, question=question, reference=reference, source=source)


def _require_unique_ids(problems: Sequence[Problem], where: str) -> None:
    seen: dict[str, int] = {}
    for index, problem in enumerate(problems):
        if problem.id in seen:
            raise ValueError(
                f"Expected unique problem ids in {where}, got {problem.id!r} at positions "
                f"{seen[problem.id]} and {index}. Give every record its own id or drop the id field."
            )
        seen[problem.id] = index


# --------------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------------


def _unknown(what: str, got: str, valid: Iterable[str], hint: str = "") -> ValueError:
    """A ValueError for an unknown ``what``, listing the valid names and the close ones."""
    names = sorted(valid)
    close = difflib.get_close_matches(got, names, n=3, cutoff=0.5)
    suggestion = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {what}; expected one of {names}.{suggestion}{hint}")


def _validate_split(name: str, split: str) -> _Spec:
    if name not in _SPECS:
        raise _unknown(f"dataset {name!r}", name, _SPECS)
    spec = _SPECS[name]
    if split not in spec.info.splits:
        raise _unknown(f"split {split!r} for dataset {name!r}", split, spec.info.splits)
    return spec


@functools.cache
def _load_split(name: str, split: str) -> tuple[Problem, ...]:
    return tuple(problem for problem, _ in _load_records(name, split))


@functools.cache
def _load_records(name: str, split: str) -> tuple[tuple[Problem, str | None], ...]:
    """The split's problems, each with its subset (the spec's ``subset_field``; None without one)."""
    spec = _SPECS[name]
    resource = files("deepgrpo_env") / "data" / name / f"{split}.jsonl"
    label = f"deepgrpo_env/data/{name}/{split}.jsonl"
    drafts: list[tuple[Problem, str | None]] = []
    kinds: list[str | None] = []
    for line_no, record in _read_jsonl(resource, label):
        try:
            question, reference, stable_id = spec.normalize(record)
            problem = _checked_problem(f"{name}-{split}-{len(drafts)}", question, reference, name)
            kind = None if spec.subset_field is None else _text_field(record, spec.subset_field)
            if kind is not None and kind not in spec.info.subsets:
                raise ValueError(f"{spec.subset_field!r} is {kind!r}, expected one of {spec.info.subsets}")
        except ValueError as e:
            raise ValueError(f"Malformed record in {label} line {line_no}: {e}.") from e
        drafts.append((problem, stable_id))
        kinds.append(kind)
    stable_ids = [stable_id for _, stable_id in drafts]
    # A dataset's own id is only worth keeping when every row has one and none repeats.
    if None not in stable_ids and len(set(stable_ids)) == len(stable_ids):
        problems = [dataclasses.replace(p, id=f"{name}-{stable_id}") for p, stable_id in drafts]
    else:
        problems = [p for p, _ in drafts]
    return tuple(zip(problems, kinds))


def load_dataset(
    name: str, split: str = "test", *, limit: int | None = None, subset: str | None = None
) -> tuple[Problem, ...]:
    """Loads a built-in dataset split as normalized problems, in file order.

    Each split is parsed once per process and cached; every call returns the same immutable tuple
    (or a prefix of it when ``limit`` is given).

    Args:
        name: A key of :data:`DATASETS` (``"gsm8k"``, ``"math500"``, ...).
        split: One of ``DATASETS[name].splits``.
        limit: Keep only the first ``limit`` problems (``None`` keeps all).
        subset: Keep only the problems of this kind, one of ``DATASETS[name].subsets`` (MAWPS:
            ``"singleop"``, ...); ids stay those of the whole split (``mawps-test-{row}``).

    Returns:
        The problems; ids are ``f"{name}-{split}-{row}"``, or ``f"{name}-{id}"`` for datasets that
        carry their own unique id (aime24, amc23, math500, svamp).

    Raises:
        ValueError: Unknown dataset or split (with close matches), a bad ``limit``, or a malformed
            vendored file.
    """
    _validate_split(name, split)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"Expected `limit` to be None or an int >= 1, got {limit!r}.")
    if subset is None:
        problems = _load_split(name, split)
    else:
        subsets = _SPECS[name].info.subsets
        if subset not in subsets:
            raise _unknown(f"subset {subset!r} of dataset {name!r}", subset, subsets)
        problems = _load_subset(name, split, subset)
    return problems if limit is None else problems[:limit]


@functools.cache
def _load_subset(name: str, split: str, subset: str) -> tuple[Problem, ...]:
    return tuple(problem for problem, kind in _load_records(name, split) if kind == subset)


# --------------------------------------------------------------------------------------------------
# User data
# --------------------------------------------------------------------------------------------------


def _custom_problem(
    record: Mapping[str, Any],
    row: int,
    *,
    question_key: str,
    answer_key: str,
    id_key: str | None,
    source: str,
) -> Problem:
    """One user record as a problem; raises ValueError saying what is wrong with it."""
    question = _text_field(record, question_key)
    answer_keys = (answer_key, "reference") if answer_key == "answer" else (answer_key,)
    raw_answer = _field(record, *answer_keys)
    reference = _answer_text(raw_answer)
    if isinstance(raw_answer, str) and "####" in reference:
        reference = _after_hashes(reference)
    if id_key is not None:
        raw_id = _field(record, id_key)
    else:
        raw_id = record.get("id", f"{source}-{row}")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or not str(raw_id).strip():
        raise ValueError(f"expected the id to be a non-empty string or an int, got {raw_id!r}")
    return _checked_problem(str(raw_id).strip(), question, reference, source)


def problems_from_records(
    records: Iterable[Mapping[str, Any]],
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    id_key: str | None = None,
    source: str = "custom",
) -> tuple[Problem, ...]:
    """Normalizes user records (dicts) to problems.

    Keys read from each record:

    * ``question_key`` (default ``"question"``): the question text, a non-empty string.
    * ``answer_key`` (default ``"answer"``): the reference, a non-empty string or a number
      (``145.0 -> "145"``). With the default key, a record without ``"answer"`` may use
      ``"reference"`` instead, so ``dataclasses.asdict(problem)`` round-trips. A string in GSM8K form
      (a solution ending ``#### 1,000``) is reduced to its final answer (``"1000"``).
    * ``id_key``: when given, every record must carry a non-empty id there. When ``None``, an
      ``"id"`` key is used if present, else the id is ``f"{source}-{position}"``.

    Other keys are ignored.

    Args:
        records: The records, e.g. a list of dicts.
        question_key: Key of the question text.
        answer_key: Key of the reference answer.
        id_key: Key of a per-record id, or ``None`` (see above).
        source: Dataset name stored in each :attr:`Problem.source` and used in generated ids.

    Returns:
        The problems in input order.

    Raises:
        ValueError: No records, a record with a missing key, an empty question or answer, or
            duplicate ids; the message names the 0-based record position.
        TypeError: A record that is not a mapping.
    """
    problems: list[Problem] = []
    for row, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise TypeError(
                f"Expected record {row} to be a mapping with {question_key!r} and {answer_key!r} "
                f"keys, got {type(record).__name__}."
            )
        try:
            problems.append(
                _custom_problem(
                    record,
                    row,
                    question_key=question_key,
                    answer_key=answer_key,
                    id_key=id_key,
                    source=source,
                )
            )
        except ValueError as e:
            raise ValueError(f"Malformed record {row} of {source!r}: {e}.") from e
    if not problems:
        raise ValueError(f"Expected at least one record for {source!r}, got none.")
    _require_unique_ids(problems, repr(source))
    return tuple(problems)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    question_key: str = "question",
    answer_key: str = "answer",
    id_key: str | None = None,
    source: str = "",
) -> tuple[Problem, ...]:
    """Loads a JSONL file of user records (one JSON object per line; blank lines are skipped).

    Records are read exactly as in :func:`problems_from_records`; generated ids count records, not
    lines.

    Args:
        path: The file.
        question_key: Key of the question text.
        answer_key: Key of the reference answer.
        id_key: Key of a per-record id, or ``None`` to use ``"id"`` when present.
        source: Dataset name for the problems; empty means the file name without its suffix.

    Returns:
        The problems in file order.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: Bad JSON, a missing key, an empty question or answer, duplicate ids, or no
            records; the message names the file and the 1-based line.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Expected a JSONL file at {str(file)!r}, but no such file exists.")
    source = source or file.stem
    label = repr(str(file))
    problems: list[Problem] = []
    for line_no, record in _read_jsonl(file, label):
        try:
            problems.append(
                _custom_problem(
                    record,
                    len(problems),
                    question_key=question_key,
                    answer_key=answer_key,
                    id_key=id_key,
                    source=source,
                )
            )
        except ValueError as e:
            raise ValueError(f"Malformed record in {label} line {line_no}: {e}.") from e
    if not problems:
        raise ValueError(f"Expected at least one record in {label}, got an empty file.")
    _require_unique_ids(problems, label)
    return tuple(problems)


def _problems_from_string(spec: str) -> tuple[Problem, ...]:
    name, _, rest = spec.partition(":")
    split, _, subset = rest.partition(":")
    if name in _SPECS:
        return load_dataset(name, split or _SPECS[name].info.default_split, subset=subset or None)
    path = Path(spec)
    if path.exists() or "/" in spec or os.sep in spec or path.suffix:
        return load_jsonl(path)
    raise _unknown(
        f"dataset {name!r}",
        name,
        _SPECS,
        hint=" A JSONL file is also accepted, by a path that exists.",
    )


def as_problems(
    data: str | os.PathLike[str] | Sequence[Problem] | Sequence[Mapping[str, Any]] | tuple[str, str],
) -> tuple[Problem, ...]:
    """Whatever names a set of problems, as a tuple of problems.

    Args:
        data: One of

            * a dataset name, ``"gsm8k:test"`` or bare ``"svamp"`` (a bare name means
              :attr:`DatasetInfo.default_split`: ``"train"`` where shipped, else ``"test"``), with
              an optional subset, ``"mawps:test:singleop"`` (:attr:`DatasetInfo.subsets`);
            * a ``(name, split)`` pair of strings;
            * a path to a JSONL file (``str`` or :class:`os.PathLike`), read by :func:`load_jsonl`;
            * a sequence of :class:`Problem` (returned as a tuple);
            * a sequence of dicts, read by :func:`problems_from_records` with ``source="custom"``.

    Returns:
        The problems.

    Raises:
        ValueError: An unknown dataset name (with close matches), malformed records, an empty
            sequence, or duplicate ids.
        FileNotFoundError: A path that does not exist.
        TypeError: Anything else, or a sequence mixing problems and dicts.
    """
    if isinstance(data, str):
        return _problems_from_string(data)
    if isinstance(data, os.PathLike):
        return load_jsonl(data)
    if isinstance(data, tuple) and len(data) == 2:
        name, split = data
        if isinstance(name, str) and isinstance(split, str):
            return load_dataset(name, split)
    if not isinstance(data, Sequence):
        raise TypeError(
            "Expected a dataset name, a JSONL path, a (name, split) pair, or a sequence of Problem "
            f"or dict, got {type(data).__name__}."
        )
    if len(data) == 0:
        raise ValueError("Expected at least one problem, got an empty sequence.")
    problems = tuple(item for item in data if isinstance(item, Problem))
    if len(problems) == len(data):
        _require_unique_ids(problems, "the given problems")
        return problems
    records = [item for item in data if isinstance(item, Mapping)]
    if len(records) == len(data):
        return problems_from_records(records)
    kinds = sorted({type(item).__name__ for item in data})
    raise TypeError(
        f"Expected a sequence of only Problem or only dict, got a mix of {kinds}. Convert the items "
        "to one kind first."
    )
