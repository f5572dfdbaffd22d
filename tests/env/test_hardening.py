"""Regression tests of issue 11's env-side failures: states are plain validated data, bad actions and
indices are refused, limits are bounded, direct verifier calls are bounded, grading bugs stay fixed."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepgrpo_env import ReasoningEnv
from deepgrpo_env.datasets import DATASETS, load_dataset, load_jsonl
from deepgrpo_env.grading import Grader, VerifierTimeout
from deepgrpo_env.state import EnvState
from deepgrpo_env.vector import ReasoningVectorEnv
from deepgrpo_env.verifiers import MathVerifier, NumericVerifier, verifier_for
from tests.helpers import TINY_PROBLEMS, TinyCodec

KW: dict[str, Any] = dict(problems=TINY_PROBLEMS, verifier="numeric", prompt="plain",
                          max_prompt_tokens=32, max_response_tokens=12)
BOMB = "\\boxed{9^{9^{9^{9^{9}}}}}"


def make_env(**kwargs: Any) -> ReasoningEnv:
    return ReasoningEnv(tokenizer=TinyCodec(), **{**KW, **kwargs})


def live_state(env: ReasoningEnv, steps: int = 3) -> EnvState:
    env.reset(options={"problem_index": 4})
    for _ in range(steps):
        env.step(5)
    return env.snapshot()


# -- states are plain data -------------------------------------------------------------------------------
def test_rng_state_is_plain_json_data_and_round_trips() -> None:
    env = make_env()
    env.reset(seed=3)
    state = env.snapshot()
    assert isinstance(state.rng_state, dict) and state.rng_state["bit_generator"] == "PCG64"
    rebuilt = dataclasses.replace(state, rng_state=json.loads(json.dumps(state.rng_state)))
    draws = [env.reset()[1]["problem_id"] for _ in range(6)]
    env.reset_to(rebuilt)
    assert [env.reset()[1]["problem_id"] for _ in range(6)] == draws


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_in_rng_state_is_refused_and_never_runs(tmp_path: Path) -> None:
    env = make_env()
    marker = tmp_path / "PWNED"
    evil = dataclasses.replace(live_state(env), rng_state=pickle.dumps(_Evil(marker)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rng_state"):
        env.reset_to(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: {"response_ids": np.array([5, 999], dtype=np.int64)}, r"response_ids: expected token ids in \[0, 46\)"),
        (lambda s: {"response_ids": np.array([5, -1], dtype=np.int64)}, "response_ids"),
        (lambda s: {"response_ids": np.array([5.0, 6.0])}, "1-D integer array"),
        (lambda s: {"response_ids": np.array([[5, 6]], dtype=np.int64)}, r"shape \(1, 2\)"),
        (lambda s: {"response_ids": [5, 6]}, "numpy array"),
        (lambda s: {"response_ids": np.full(13, 5, dtype=np.int64)}, "at most `max_response_tokens`=12"),
        (lambda s: {"response_ids": np.full(12, 5, dtype=np.int64)}, "live"),
        (lambda s: {"prompt_ids": np.full(40, 5, dtype=np.int64)}, "at most `max_prompt_tokens`=32"),
        (lambda s: {"prompt_ids": s.prompt_ids[:-1].copy()}, "prompt"),
        (lambda s: {"problem_index": -1}, r"problem_index: expected an int in \[0, 20\)"),
        (lambda s: {"problem_index": 20}, "problem_index"),
        (lambda s: {"problem_index": 2.0}, "problem_index"),
        (lambda s: {"problem_index": True}, "problem_index"),
        (lambda s: {"problem_index": 5}, "problem"),  # index of another problem than the one stored
        (lambda s: {"problem": dataclasses.replace(s.problem, reference="0")}, "problem"),
        (lambda s: {"terminated": True, "truncated": True}, "both True"),
        (lambda s: {"terminated": "yes"}, "terminated: expected a bool"),
        (lambda s: {"rng_state": {"bit_generator": "os.system", "state": {}}}, "bit_generator"),
        (lambda s: {"rng_state": {**s.rng_state, "state": {"state": "x", "inc": 1}}}, "rng_state"),
        (lambda s: {"rng_state": None}, "rng_state"),
        (lambda s: {"fingerprint": 7}, "different configuration"),
    ],
)
def test_reset_to_names_what_is_wrong(change: Any, match: str) -> None:
    env = make_env()
    state = live_state(env)
    before = env.snapshot()
    with pytest.raises((ValueError, TypeError), match=match):
        env.reset_to(dataclasses.replace(state, **change(state)))
    after = env.snapshot()  # the env was not changed by the refused state
    assert after == before


def test_vector_reset_to_is_atomic() -> None:
    venv = ReasoningVectorEnv(4, tokenizer=TinyCodec(), **KW)
    venv.reset(seed=0)
    venv.step(np.full(4, 5))
    good = venv.snapshot([0])[0]
    bad = dataclasses.replace(good, response_ids=np.array([5, 999], dtype=np.int64))
    before = venv.snapshot()
    with pytest.raises(ValueError, match=r"states\[1\] \(for sub-env 3\).*No sub-env was changed"):
        venv.reset_to([good, bad], [2, 3])
    assert venv.snapshot() == before  # sub-env 2 was not overwritten


@pytest.mark.parametrize("action", [True, False, np.bool_(True), 1.0, np.float32(2), "3", None, np.array(1.5)])
def test_step_refuses_bool_and_float_actions(action: Any) -> None:
    env = make_env()
    env.reset(options={"problem_index": 0})
    with pytest.raises(ValueError, match="int token id"):
        env.step(action)
    assert env.snapshot().depth == 0


def test_step_takes_numpy_integers() -> None:
    env = make_env()
    env.reset(options={"problem_index": 0})
    env.step(np.int64(5))
    env.step(np.array(6))
    assert env.snapshot().response_ids.tolist() == [5, 6]


@pytest.mark.parametrize("indices", [[1.7], [True], ["1"], [np.float64(1)], 1])
def test_vector_indices_must_be_ints(indices: Any) -> None:
    venv = ReasoningVectorEnv(3, tokenizer=TinyCodec(), **KW)
    venv.reset(seed=0)
    with pytest.raises(TypeError, match="int env indices"):
        venv.snapshot(indices=indices)


@pytest.mark.parametrize("value", [10**12, 2**20 + 1, 0, True, 5.0])
def test_token_limits_have_a_sane_bound(value: Any) -> None:
    with pytest.raises(ValueError, match=r"max_response_tokens` to be an int in \[1, 1048576\]"):
        make_env(max_response_tokens=value)


# -- direct verifier calls are bounded -------------------------------------------------------------------
def test_direct_math_verifier_call_scores_normally() -> None:
    assert MathVerifier()("so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert MathVerifier()("\\boxed{3}", "0.5") == 0.0


def test_direct_math_verifier_call_times_out_in_the_main_thread() -> None:
    with pytest.raises(VerifierTimeout, match="did not finish within 1 s"):
        MathVerifier(timeout=1.0)(BOMB, "1")


def test_direct_math_verifier_call_times_out_in_another_thread() -> None:
    out: list[BaseException | float | None] = []

    def call() -> None:
        try:
            out.append(MathVerifier(timeout=1.0)(BOMB, "1"))
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=call)
    t.start()
    t.join(120)
    assert not t.is_alive() and isinstance(out[0], VerifierTimeout)


def _call_in_pool(_: int) -> str:
    try:
        MathVerifier(timeout=1.0)(BOMB, "1")
    except VerifierTimeout:
        return "timeout"
    return "returned"


def test_direct_math_verifier_call_times_out_in_a_pool_worker() -> None:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_call_in_pool, [0]) == ["timeout"]


def test_grader_path_is_unchanged_by_bounded_direct_calls() -> None:
    with Grader(MathVerifier(), timeout=1.0) as grader:
        grade = grader.grade(BOMB, "1")
        assert grade.status == "timeout" and grade.score is None
        assert grader.grade("\\boxed{2}", "2").score == 1.0


def test_numeric_verifier_is_bounded_by_construction() -> None:
    # Linear-time scans of at most max_chars characters: a megabyte of digits reads at once.
    assert NumericVerifier()("1" * 1_000_000 + " so 7", "7") == 1.0
    assert NumericVerifier().inline_safe


# -- grading bugs fixed at their root --------------------------------------------------------------------
def _problem(dataset: str, split: str, pid: str) -> Any:
    return next(p for p in load_dataset(dataset, split) if p.id == pid)


def test_math_test_2269_final_period_is_not_part_of_the_gold() -> None:
    p = _problem("math", "test", "math-test-2269")
    assert p.reference == "\\frac{7}{5} + \\frac{1}{5} i"
    v = MathVerifier()
    assert v.compute("\\boxed{\\frac{7}{5} + \\frac{1}{5} i}", p.reference) == 1.0
    assert v.compute("\\boxed{\\frac{1}{5}}", p.reference) == 0.0
    # the raw reference with its period parses whole too (the period is dropped, not the rest)
    assert v.compute("\\boxed{\\frac{7}{5} + \\frac{1}{5} i}", p.reference + ".") == 1.0
    assert v.compute("\\boxed{\\frac{1}{5}}", p.reference + ".") == 0.0


def test_a_gold_that_parses_only_in_part_is_unscorable() -> None:
    v = MathVerifier()
    assert v.compute("\\boxed{\\frac{1}{5}}", "\\frac{7}{5} + \\frac{1}{5} i \\\\") is None
    assert v.compute("\\boxed{\\frac{1}{5}}", "\\frac{7}{5} + \\frac{1}{5} i;") is None


def test_math_test_1598_thousands_separator_inside_a_fraction() -> None:
    p = _problem("math", "test", "math-test-1598")
    assert p.reference == "\\frac{12}{5,\\!525}"
    v = MathVerifier()
    assert v.compute("\\boxed{\\frac{12}{5,\\!525}}", p.reference) == 1.0
    assert v.compute("\\boxed{\\frac{12}{5525}}", p.reference) == 1.0
    assert v.compute("\\boxed{\\frac{12}{525}}", p.reference) == 0.0


@pytest.mark.parametrize(
    ("response", "reference", "score"),
    [
        ("$\\boxed{1,\\!000}$", "1000", 1.0),
        ("\\boxed{14{,}916}", "916", 0.0),
        ("\\boxed{14{,}916}", "14916", 1.0),
        ("so 1\\,000 apples", "1000", 1.0),
        ("１２", "12", 1.0),
        ("答案是１，０００．５", "1000.5", 1.0),
        ("12", "１２", 1.0),
        ("x² = 4", "2", 0.0),  # superscripts are not digits of a number
    ],
)
def test_numeric_verifier_reads_latex_separators_and_unicode_digits(response: str, reference: str, score: float) -> None:
    assert NumericVerifier()(response, reference) == score


def test_math_verifier_reads_fullwidth_digits() -> None:
    assert MathVerifier().compute("\\boxed{１２}", "12") == 1.0


def test_non_utf8_byte_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = [json.dumps({"question": f"q{i}", "answer": str(i)}).encode() for i in range(5)]
    lines[3] = b'{"question": "caf\xe9", "answer": "1"}'
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ValueError, match=r"line 4: not valid UTF-8 \(byte 0xe9 at column 18"):
        load_jsonl(path)


# -- every vendored dataset, fed a perfect answer, scores 1 on every item --------------------------------
def _perfect_scores(name: str, split: str, step: int) -> list[tuple[str, str, Any]]:
    info = DATASETS[name]
    problems = load_dataset(name, split)[::step]
    with Grader(verifier_for(info.answer_kind), timeout=30, num_workers=2) as grader:
        grades = grader.grade_many([(f"The answer is \\boxed{{{p.reference}}}.", p.reference) for p in problems])
    return [(p.id, p.reference, g.status) for p, g in zip(problems, grades) if g.score != 1.0]


SPLITS = [(name, split) for name, info in DATASETS.items() for split in info.splits]


@pytest.mark.parametrize(("name", "split"), SPLITS)
def test_every_dataset_scores_a_perfect_answer_1_sampled(name: str, split: str) -> None:
    # Every item of the numeric datasets and of MATH-500; every 10th of MATH (the heavy test takes all).
    assert _perfect_scores(name, split, 10 if name == "math" else 1) == []


@pytest.mark.heavy
def test_every_math_item_scores_a_perfect_answer_1() -> None:
    assert _perfect_scores("math", "test", 1) == []
