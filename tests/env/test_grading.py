"""Tests for Grader: hard timeouts, worker replacement, error propagation, threads, pools, pickling."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from deepgrpo_env.grading import Grade, Grader, VerifierError, check_score
from deepgrpo_env.verifiers import NumericVerifier

TIMEOUT = 1.0
MARGIN = 3.0  # generous: the suite may share two cores with other work


def make_scripted_verifier() -> Callable[[str, str], object]:
    """A verifier whose behaviour the response selects; a closure, so cloudpickle ships it by value."""

    def scripted(response: str, reference: str) -> object:
        if response == "sleep":
            time.sleep(3600)
        if response == "raise":
            raise ValueError("boom from the verifier")
        if response == "die":
            os._exit(3)
        if response == "none":
            return None
        if response == "text":
            return "yes"
        if response == "nan":
            return float("nan")
        if response.startswith("wait:"):
            time.sleep(float(response[5:]))
            response = response[5:]
        return 1.0 if response == reference else 0.0

    return scripted


@pytest.fixture(scope="module")
def grader() -> Iterator[Grader]:
    g = Grader(make_scripted_verifier(), timeout=TIMEOUT, num_workers=2)  # type: ignore[arg-type]
    g.start()
    yield g
    g.close()


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def test_scores_and_unscorable(grader: Grader) -> None:
    ok = grader.grade("a", "a")
    assert (ok.score, ok.status, ok.detail) == (1.0, "ok", "")
    assert 0.0 <= ok.seconds < TIMEOUT
    assert grader.grade("a", "b").score == 0.0
    none = grader.grade("none", "x")
    assert (none.score, none.status) == (None, "unscorable")


def test_timeout_kills_and_replaces_the_worker(grader: Grader) -> None:
    grader.start()
    grade, elapsed = timed(lambda: grader.grade("sleep", "x"))
    assert isinstance(grade, Grade)
    assert (grade.score, grade.status) == (None, "timeout")
    assert TIMEOUT <= grade.seconds < TIMEOUT + MARGIN
    assert elapsed < TIMEOUT + MARGIN
    assert "limit" in grade.detail
    assert grader.grade("a", "a").score == 1.0  # the replacement worker grades the next call


def test_dead_worker_counts_as_timeout_and_is_replaced(grader: Grader) -> None:
    grade = grader.grade("die", "x")
    assert (grade.score, grade.status) == (None, "timeout")
    assert "exit code 3" in grade.detail
    assert grader.grade("b", "b").score == 1.0


def test_raising_verifier_propagates_with_remote_traceback(grader: Grader) -> None:
    with pytest.raises(VerifierError, match="boom from the verifier") as info:
        grader.grade("raise", "x")
    assert "ValueError" in str(info.value)
    assert "Traceback" in str(info.value)
    assert grader.grade("c", "c").score == 1.0  # the worker survives a verifier's exception


def test_raising_lambda_propagates() -> None:
    with (
        Grader(lambda r, ref: 1 / 0, timeout=TIMEOUT) as g,
        pytest.raises(VerifierError, match="ZeroDivisionError"),
    ):
        g.grade("a", "b")


@pytest.mark.parametrize(("response", "match"), [("text", "got str 'yes'"), ("nan", "finite")])
def test_non_number_return_is_an_error(grader: Grader, response: str, match: str) -> None:
    with pytest.raises(VerifierError, match=match):
        grader.grade(response, "x")


def test_grade_many_keeps_order_and_times_out_individually(grader: Grader) -> None:
    grader.start()
    pairs = [("wait:0.4", "0.4"), ("a", "b"), ("sleep", "x"), ("wait:0.1", "nope"), ("d", "d")]
    grades, elapsed = timed(lambda: grader.grade_many(pairs))
    assert isinstance(grades, list)
    assert [g.score for g in grades] == [1.0, 0.0, None, 0.0, 1.0]
    assert [g.status for g in grades] == ["ok", "ok", "timeout", "ok", "ok"]
    assert elapsed < TIMEOUT + MARGIN
    assert grader.grade_many([]) == []


def test_grade_many_runs_in_parallel(grader: Grader) -> None:
    grader.start()
    grades, elapsed = timed(lambda: grader.grade_many([("wait:0.8", "0.8"), ("wait:0.8", "0.8")]))
    assert [g.score for g in grades] == [1.0, 1.0]  # type: ignore[attr-defined]
    assert elapsed < 1.4  # two workers: about 0.8 s, not 1.6 s


def test_hard_timeout_from_a_background_thread(grader: Grader) -> None:
    grader.start()
    out: list[Grade] = []
    thread = threading.Thread(target=lambda: out.append(grader.grade("sleep", "x")))
    start = time.perf_counter()
    thread.start()
    thread.join(TIMEOUT + MARGIN + 5)
    assert not thread.is_alive()
    assert time.perf_counter() - start < TIMEOUT + MARGIN
    assert out[0].status == "timeout"


def _grade_in_pool_worker(_: int) -> tuple[str, str]:
    with Grader(lambda r, ref: time.sleep(3600), timeout=0.5) as g:
        slow = g.grade("a", "b")
    with Grader(lambda r, ref: float(r == ref), timeout=5.0) as g:
        fast = g.grade("a", "a")
    return slow.status, f"{fast.score}"


def test_works_inside_a_daemonic_pool_worker() -> None:
    # multiprocessing refuses to start children from daemonic pool workers; our subprocesses do not.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(_grade_in_pool_worker, [0]) == [("timeout", "1.0")]


def test_pickles_and_grades_after_unpickling(grader: Grader) -> None:
    clone = pickle.loads(pickle.dumps(grader))
    try:
        assert (clone.timeout, clone.num_workers, clone.inline) == (TIMEOUT, 2, False)
        assert clone.grade("e", "e").score == 1.0
        assert clone.grade("sleep", "x").status == "timeout"
    finally:
        clone.close()


def test_forked_child_uses_its_own_workers(grader: Grader) -> None:
    grader.start()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: grade, clean up, report, and leave without running pytest's teardown
        try:
            grade = grader.grade("f", "f")
            grader.close()
            os.write(write_fd, f"{grade.status}:{grade.score}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_fd) as f:
        assert f.read() == "ok:1.0"
    assert os.waitstatus_to_exitcode(status) == 0
    before = [w.proc.pid for w in grader._workers]
    assert grader.grade("g", "g").score == 1.0  # the child neither used nor stopped our workers
    assert [w.proc.pid for w in grader._workers] == before


def test_close_then_reuse() -> None:
    g = Grader(lambda r, ref: 1.0, timeout=5.0)
    assert g.grade("a", "b").score == 1.0
    g.close()
    g.close()  # idempotent
    assert g.grade("a", "b").score == 1.0  # workers restart lazily
    g.close()


def test_inline_numeric_runs_in_process() -> None:
    g = Grader(NumericVerifier())
    assert g.inline is True
    grade = g.grade("The answer is 72.", "72")
    assert (grade.score, grade.status) == (1.0, "ok")
    assert g.grade("so 4", "not a number").status == "unscorable"
    clone = pickle.loads(pickle.dumps(g))
    assert clone.inline and clone.grade_many([("1", "1"), ("2", "1")])[1].score == 0.0


def test_inline_errors_are_wrapped_with_the_cause() -> None:
    def bad(response: str, reference: str) -> float:
        raise KeyError("missing")

    g = Grader(bad, inline=True)
    with pytest.raises(VerifierError, match="KeyError") as info:
        g.grade("a", "b")
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(VerifierError, match=re.escape("float | None")):
        Grader(lambda r, ref: [1.0], inline=True).grade("a", "b")  # type: ignore[arg-type,return-value]


def test_check_score_accepts_real_numbers() -> None:
    assert check_score(True, "v") == 1.0
    assert check_score(0, "v") == 0.0
    assert check_score(0.25, "v") == 0.25
    assert check_score(None, "v") is None
    with pytest.raises(VerifierError):
        check_score(float("inf"), "v")


def test_argument_validation(grader: Grader) -> None:
    with pytest.raises(TypeError, match="callable"):
        Grader("not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        Grader(NumericVerifier(), timeout=0)
    with pytest.raises(ValueError, match="num_workers"):
        Grader(NumericVerifier(), num_workers=0)

    class Unpicklable:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __call__(self, response: str, reference: str) -> float:
            return 0.0

    with pytest.raises(TypeError, match="inline=True"):
        Grader(Unpicklable())
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        grader.grade_many([("a", "b"), ("a", 3)])  # type: ignore[list-item]
