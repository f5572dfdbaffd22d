"""Tests for the vendored datasets and the loaders in deepgrpo_env.datasets."""

from __future__ import annotations

import hashlib
import json
import re
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from deepgrpo_env import datasets
from deepgrpo_env.datasets import (
    DATASETS,
    DatasetInfo,
    as_problems,
    extract_last_boxed,
    load_dataset,
    load_jsonl,
    problems_from_records,
)
from deepgrpo_env.problems import Problem

DATA = files("deepgrpo_env") / "data"

ROW_COUNTS = {
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("math", "test"): 5000,
    ("math500", "test"): 500,
    ("aime24", "test"): 30,
    ("amc23", "test"): 40,
    ("svamp", "test"): 1000,
    ("mawps", "test"): 2065,
}


def raw_records(name: str, split: str = "test") -> list[dict[str, Any]]:
    """The vendored file's records, parsed without the loader under test."""
    text = (DATA / name / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write(tmp_path: Path, lines: list[str], name: str = "probs.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------
# Vendored data and the registry
# ------------------------------------------------------------------------------------------------


def test_registry_lists_every_vendored_split() -> None:
    assert set(ROW_COUNTS) == {(name, split) for name, info in DATASETS.items() for split in info.splits}
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo)
        assert info.name == name
        assert info.license.startswith("MIT")
        assert (DATA / name / "LICENSE").is_file()
    assert DATASETS["gsm8k"].default_split == "train"
    assert DATASETS["svamp"].default_split == "test"
    assert {n for n, i in DATASETS.items() if i.answer_kind == "math"} == {"math", "math500"}


def test_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        DATASETS["new"] = DATASETS["gsm8k"]  # type: ignore[index]


def test_vendored_files_match_readme_checksums() -> None:
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    listed = dict(
        (path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (\S+\.jsonl)$", readme, re.M)
    )
    assert set(listed) == {f"{name}/{split}.jsonl" for name, split in ROW_COUNTS}
    for path, digest in listed.items():
        name, filename = path.split("/")
        assert hashlib.sha256((DATA / name / filename).read_bytes()).hexdigest() == digest, path


@pytest.mark.parametrize(("name", "split"), sorted(ROW_COUNTS))
def test_split_rows_ids_and_fields(name: str, split: str) -> None:
    problems = load_dataset(name, split)
    assert isinstance(problems, tuple)
    assert len(problems) == ROW_COUNTS[name, split]
    assert len({p.id for p in problems}) == len(problems)
    assert all(p.id.startswith(f"{name}-") and p.source == name for p in problems)
    assert all(p.question and p.question == p.question.strip() for p in problems)
    assert all(p.reference and p.reference == p.reference.strip() for p in problems)
    if DATASETS[name].answer_kind == "numeric":
        assert all(re.fullmatch(r"-?\d+(\.\d+)?", p.reference) for p in problems)


def test_loading_does_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    datasets._load_split.cache_clear()
    assert load_dataset("amc23")[0].reference == "27"


def test_loading_is_cached_and_limit_takes_a_prefix() -> None:
    full = load_dataset("gsm8k", "test")
    assert load_dataset("gsm8k", "test") is full
    assert load_dataset("gsm8k", "test", limit=5) == full[:5]
    assert load_dataset("aime24", limit=1000) == load_dataset("aime24")


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit_is_rejected(limit: Any) -> None:
    with pytest.raises(ValueError, match="limit"):
        load_dataset("aime24", limit=limit)


def test_unknown_dataset_and_split_suggest_close_matches() -> None:
    with pytest.raises(ValueError, match=r"Unknown dataset 'gsm8'.*'aime24'.*Did you mean 'gsm8k'"):
        load_dataset("gsm8", "test")
    with pytest.raises(ValueError, match=r"split 'tset'.*\['test', 'train'\].*Did you mean 'test'"):
        load_dataset("gsm8k", "tset")
    with pytest.raises(ValueError, match=r"split 'train'.*\['test'\]"):
        load_dataset("svamp", "train")


# ------------------------------------------------------------------------------------------------
# Per-dataset normalization on known items
# ------------------------------------------------------------------------------------------------


def test_gsm8k_known_items() -> None:
    first = load_dataset("gsm8k", "train")[0]
    assert first == Problem(
        id="gsm8k-train-0",
        question=raw_records("gsm8k", "train")[0]["question"],
        reference="72",
        source="gsm8k",
    )
    assert load_dataset("gsm8k", "train")[345].reference == "1080"  # answer "#### 1,080"
    assert load_dataset("gsm8k", "test")[0].reference == "18"
    assert load_dataset("gsm8k", "test")[0].id == "gsm8k-test-0"


def test_math_references_keep_nested_braces() -> None:
    problems = load_dataset("math")
    assert problems[0].reference == "2"
    assert problems[9].reference == "-\\frac{1}{8}"
    assert problems[10].reference == "\\frac{x+2}{7}"
    assert problems[12].reference == "10"  # two boxes in the solution: the last one wins
    assert problems[0].question.startswith("How many vertical asymptotes")
    assert problems[0].id == "math-test-0"


def test_math500_answer_field_agrees_with_last_box() -> None:
    records = raw_records("math500")
    assert all(extract_last_boxed(r["solution"]) == r["answer"] for r in records)
    problems = load_dataset("math500")
    assert [p.reference for p in problems] == [r["answer"] for r in records]
    assert problems[0].reference == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert problems[0].id == "math500-test/precalculus/807.json"


def test_aime24_and_amc23_first_items() -> None:
    aime = load_dataset("aime24")
    assert aime[0].id == "aime24-60"
    assert aime[0].reference == "204"
    assert aime[0].question.startswith("Every morning Aya goes for a $9$-kilometer-long walk")
    assert aime[7].reference == "25"  # stored as "025"
    amc = load_dataset("amc23")
    assert (amc[0].id, amc[0].reference) == ("amc23-0", "27")  # stored as 27.0
    assert amc[0].question.startswith("Cities $A$ and $B$ are $45$ miles apart.")
    assert amc[15].reference == "-1"


def test_svamp_joins_body_and_question() -> None:
    records = raw_records("svamp")
    problems = load_dataset("svamp")
    assert problems[0].reference == "145"
    assert problems[0].id == "svamp-chal-777"
    # Body without final punctuation gets a period; one that has it gets only a space.
    assert problems[0].question == records[0]["Body"] + ". " + records[0]["Question"]
    assert problems[0].question.endswith("into 93 groups. How big is each group of bananas?")
    assert records[1]["Body"].endswith(".")
    assert problems[1].question == records[1]["Body"] + " " + records[1]["Question"]
    assert problems[1].reference == "19"


def test_mawps_known_items() -> None:
    problems = load_dataset("mawps")
    assert problems[0].reference == "43"
    assert problems[0].question.startswith("Joan found 70 seashells on the beach.")
    assert problems[0].id == "mawps-test-0"
    assert problems[205].reference == "11.5"


# ------------------------------------------------------------------------------------------------
# extract_last_boxed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\sqrt{\\frac{a}{b^{2}}}} done", "\\sqrt{\\frac{a}{b^{2}}}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed{3} then \\fbox{4}", "4"),
        ("\\boxed{ x = 5 }", "x = 5"),
        ("\\boxed {12}", "12"),
        ("The answer is $\\boxed 5$.", "5"),
        ("The answer is \\boxed 5.", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),
        ("\\boxed{}", ""),
        ("no box here: 42", None),
        ("", None),
        ("\\boxed{\\frac{1}{2}", None),  # unbalanced
        ("\\boxed{1} and then \\boxed{2", None),  # the final box is cut off
        ("\\boxed", None),
        ("\\boxed ", None),
        ("\\boxedtext{3}", None),
    ],
)
def test_extract_last_boxed(text: str, expected: str | None) -> None:
    assert extract_last_boxed(text) == expected


def test_extract_last_boxed_is_linear_on_adversarial_input() -> None:
    texts = ["\\boxed{" * 100_000, "\\boxed{" + "{" * 500_000, "\\boxed " * 100_000 + "x"]
    start = time.perf_counter()
    results = [extract_last_boxed(t) for t in texts]
    assert results == [None, None, "x"]
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------------------------------------------
# User data: load_jsonl, problems_from_records
# ------------------------------------------------------------------------------------------------


def test_load_jsonl_reads_user_records(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            json.dumps({"question": " What is 2+2? ", "answer": "4"}),
            "",
            json.dumps({"question": "Sum?", "answer": "So 500+500 = 1000.\n#### 1,000"}),
            json.dumps({"question": "Half of 1?", "answer": 0.5}),
            json.dumps({"question": "Tiny?", "answer": 1e-05}),
            json.dumps({"question": "Round?", "reference": 12.0}),
        ],
    )
    problems = load_jsonl(path)
    assert [p.reference for p in problems] == ["4", "1000", "0.5", "0.00001", "12"]
    assert [p.id for p in problems] == [f"probs-{i}" for i in range(5)]
    assert problems[0].question == "What is 2+2?"
    assert {p.source for p in problems} == {"probs"}


def test_load_jsonl_custom_keys_and_ids(tmp_path: Path) -> None:
    path = write(tmp_path, [json.dumps({"uid": 9, "problem": "Q?", "target": "\\frac{1}{2}"})])
    (problem,) = load_jsonl(
        str(path), question_key="problem", answer_key="target", id_key="uid", source="mine"
    )
    assert problem == Problem(id="9", question="Q?", reference="\\frac{1}{2}", source="mine")


@pytest.mark.parametrize(
    ("lines", "line_no", "what"),
    [
        (['{"question": "a", "answer": "1"}', "{not json}"], 2, "invalid JSON"),
        (['{"question": "a", "answer": "1"}', "", '{"question": "b"}'], 3, "missing key 'answer'"),
        (['{"answer": "1"}'], 1, "missing key 'question'"),
        (['{"question": "   ", "answer": "1"}'], 1, "empty question"),
        (['{"question": "a", "answer": ""}'], 1, "empty reference"),
        (['{"question": "a", "answer": null}'], 1, "string or a number"),
        (['{"question": "a", "answer": true}'], 1, "boolean"),
        (['{"question": "a", "answer": NaN}'], 1, "finite"),
        (['{"question": 3, "answer": "1"}'], 1, "expected 'question' to be a string"),
        (['["question", "answer"]'], 1, "expected a JSON object"),
    ],
)
def test_malformed_jsonl_names_file_and_line(
    tmp_path: Path, lines: list[str], line_no: int, what: str
) -> None:
    path = write(tmp_path, lines, name="bad.jsonl")
    with pytest.raises(ValueError) as info:
        load_jsonl(path)
    message = str(info.value)
    assert str(path) in message
    assert f"line {line_no}:" in message
    assert what in message


def test_load_jsonl_rejects_empty_files_duplicates_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty file"):
        load_jsonl(write(tmp_path, [""], name="empty.jsonl"))
    dup = ['{"id": "a", "question": "q", "answer": "1"}'] * 2
    with pytest.raises(ValueError, match=r"unique problem ids.*'a' at positions 0 and 1"):
        load_jsonl(write(tmp_path, dup, name="dup.jsonl"))
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_jsonl(missing)


def test_problems_from_records() -> None:
    problems = problems_from_records(
        [{"question": "1+1?", "answer": 2}, {"id": "x", "question": "2+2?", "reference": "4"}],
        source="toy",
    )
    assert problems == (
        Problem("toy-0", "1+1?", "2", "toy"),
        Problem("x", "2+2?", "4", "toy"),
    )
    with pytest.raises(ValueError, match=r"record 1 of 'custom': missing key 'answer' or 'reference'"):
        problems_from_records([{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(ValueError, match="missing key 'uid'"):
        problems_from_records([{"question": "a", "answer": "1"}], id_key="uid")
    with pytest.raises(TypeError, match="record 0 to be a mapping"):
        problems_from_records(["What is 1+1?"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one record"):
        problems_from_records([])


# ------------------------------------------------------------------------------------------------
# as_problems
# ------------------------------------------------------------------------------------------------


def test_as_problems_accepts_dataset_names_and_pairs() -> None:
    assert as_problems("gsm8k:test") is load_dataset("gsm8k", "test")
    assert as_problems("gsm8k") is load_dataset("gsm8k", "train")
    assert as_problems("svamp") is load_dataset("svamp", "test")
    assert as_problems(("math500", "test")) is load_dataset("math500", "test")


def test_as_problems_accepts_paths_and_sequences(tmp_path: Path) -> None:
    path = write(tmp_path, ['{"question": "q", "answer": "1"}'])
    expected = (Problem("probs-0", "q", "1", "probs"),)
    assert as_problems(path) == expected
    assert as_problems(str(path)) == expected
    given = [Problem("a", "q", "1"), Problem("b", "r", "2")]
    assert as_problems(given) == tuple(given)
    assert as_problems([{"question": "q", "answer": 3.0}]) == (Problem("custom-0", "q", "3", "custom"),)


def test_as_problems_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Did you mean 'svamp'"):
        as_problems("svamb")
    with pytest.raises(ValueError, match="Unknown split 'dev'"):
        as_problems("gsm8k:dev")
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        as_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="empty sequence"):
        as_problems([])
    with pytest.raises(ValueError, match="unique problem ids"):
        as_problems([Problem("a", "q", "1"), Problem("a", "r", "2")])
    with pytest.raises(TypeError, match="mix of"):
        as_problems([Problem("a", "q", "1"), {"question": "r", "answer": "2"}])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        as_problems(3)  # type: ignore[arg-type]


def test_mawps_subsets_partition_the_split_by_the_type_field() -> None:
    records = raw_records("mawps")
    full = load_dataset("mawps")
    seen: set[str] = set()
    for kind in DATASETS["mawps"].subsets:
        sub = load_dataset("mawps", "test", subset=kind)
        rows = [i for i, r in enumerate(records) if r["type"] == kind]
        assert [p.id for p in sub] == [full[i].id for i in rows]  # the whole split's ids, in file order
        assert as_problems(f"mawps:test:{kind}") == sub
        seen.update(p.id for p in sub)
    assert seen == {p.id for p in full}
    assert len(load_dataset("mawps", subset="singleop")) == 562
    with pytest.raises(ValueError, match=r"subset 'singleops'.*Did you mean 'singleop'"):
        load_dataset("mawps", subset="singleops")
    with pytest.raises(ValueError, match="subset"):
        load_dataset("svamp", subset="singleop")  # svamp has no subsets
