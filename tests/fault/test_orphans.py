"""Fault tier: grading workers die with their parent, even mid-computation (``kill -9`` of the trainer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from deepgrpo_env.grading import Grader

pytestmark = pytest.mark.fault

# A parent that starts a MathVerifier worker, prints its pid, then grades an answer that keeps SymPy
# busy for many minutes (the worker holds the GIL in big-integer arithmetic).
_PARENT = textwrap.dedent(
    """
    import sys, threading
    from deepgrpo_env.grading import Grader
    from deepgrpo_env.verifiers import MathVerifier
    grader = Grader(MathVerifier(), timeout=600)
    def start():
        grader.start()
    t = threading.Thread(target=start)  # started from a thread that then exits: the worker must live on
    t.start(); t.join()
    print(grader._workers[0].proc.pid, flush=True)
    grader.grade("\\\\boxed{9^{9^{9^{9^{9}}}}}", "1")
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie waiting for init to reap it is dead


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux")
def test_worker_dies_within_a_second_or_two_of_its_killed_parent() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()}
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        # Wait until the worker is busy in the costly computation (it burns CPU).
        start_cpu = _cpu_seconds(worker)
        deadline = time.monotonic() + 30
        while _cpu_seconds(worker) - start_cpu < 1.0:
            assert time.monotonic() < deadline, "the worker never started computing"
            time.sleep(0.1)
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        killed = time.monotonic()
        while _alive(worker) and time.monotonic() - killed < 2.0:
            time.sleep(0.02)
        survived = time.monotonic() - killed
        assert not _alive(worker), f"grading worker {worker} outlived its SIGKILLed parent by > {survived:.1f} s"
    finally:
        parent.kill()
        parent.wait()


def test_worker_started_from_a_finished_thread_keeps_grading() -> None:
    # PR_SET_PDEATHSIG follows the thread that started the child; workers come from a spawner thread,
    # so a grader started in a short-lived thread keeps its worker after that thread ends.
    grader = Grader(lambda r, g: float(r == g), timeout=30)
    try:
        t = threading.Thread(target=grader.start)
        t.start()
        t.join()
        pid = grader._workers[0].proc.pid
        time.sleep(0.5)
        assert grader.grade("a", "a").score == 1.0
        assert grader._workers[0].proc.pid == pid
    finally:
        grader.close()


def test_cpu_limit_backstop_kills_a_runaway_task() -> None:
    # RLIMIT_CPU: a worker limits each task to timeout + 1 CPU second; the kernel kills it after that even
    # if nobody is left to do so. Here the parent's timer is disabled by a long wall timeout, so only the
    # backstop can end the task: run a busy loop in a worker started with a 1 s task budget.
    from multiprocessing import Pipe

    import cloudpickle

    from deepgrpo_env import grading

    def spin(response: str, reference: str) -> float:
        while True:
            pass

    parent_conn, child_conn = Pipe(duplex=True)
    fd = child_conn.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-c", grading._BOOTSTRAP, str(fd), str(os.getpid()), "1.0"],
        pass_fds=(fd,), stdin=subprocess.DEVNULL, start_new_session=True,
    )
    child_conn.close()
    try:
        parent_conn.send(list(sys.path))
        parent_conn.send_bytes(cloudpickle.dumps(spin))
        assert parent_conn.recv() == ("ready", None)
        parent_conn.send(("x", "y"))
        start = time.monotonic()
        code = proc.wait(timeout=30)
        assert code == -signal.SIGXCPU, code
        # ~2 CPU seconds; the wall-clock bound is loose because a loaded 2-core machine stretches them.
        assert time.monotonic() - start < 25
    finally:
        proc.kill()
        proc.wait()
        parent_conn.close()
