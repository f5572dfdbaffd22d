"""Safe grading: runs a verifier in worker processes with a hard per-call timeout.

Why worker processes: a model can write answers that make a symbolic checker compute for hours
(``9^{9^{9^9}}``), and math-verify's own timeout relies on ``SIGALRM``, which only works on the main
thread of the main interpreter (off it, other trainers silently score everything 0). A separate
process can always be killed, from any thread.

Why ``subprocess`` rather than ``multiprocessing.Process``: ``fork`` is unsafe once torch has started
threads, and ``multiprocessing`` refuses to start children from a daemonic process, so a grader could
not run inside a ``multiprocessing.Pool`` worker. Workers are plain ``python -c`` subprocesses
(POSIX only) that talk to the parent over a ``multiprocessing`` socket pair; the verifier travels with
``cloudpickle`` so lambdas and closures work.

Workers die with their parent: on Linux each worker asks the kernel (``prctl(PR_SET_PDEATHSIG,
SIGKILL)``, as its first statement) to be killed when the process that started it dies, so a
trainer killed with ``kill -9`` leaves no worker behind even if the worker is deep inside a SymPy
computation that holds the GIL. The death signal is tied to the *thread* that started the worker,
so workers are started from one long-lived spawner thread per process, never from a caller's
short-lived thread. As a backstop (and on other POSIX systems), a worker sets ``RLIMIT_CPU`` before
every task to the CPU time it has used plus the grade timeout plus a second, so a runaway task dies
even if nobody is left to kill it; an idle worker reads EOF when its parent dies and exits.

Workers run in their own session (``start_new_session=True``): Ctrl-C in the terminal reaches only
the trainer (which then stops its workers), and :meth:`_Worker.stop` kills a worker's whole group.
Killing the run's process group kills the trainer, whose death then kills the workers.

Outcomes: a verifier's float is returned as is (status ``"ok"``), ``None`` is ``"unscorable"``, a
call that overruns the timeout or kills its worker is ``"timeout"`` (the worker is replaced). None
of these is ever turned into a silent 0. A verifier that raises has a bug: :class:`VerifierError`
reaches the caller with the worker's traceback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from typing import Any, Literal, cast

import cloudpickle

from deepgrpo_env.verifiers import Verifier

__all__ = [
    "CORRECT_THRESHOLD",
    "WORKER_START_TIMEOUT",
    "Grade",
    "GradeStatus",
    "Grader",
    "VerifierError",
    "VerifierTimeout",
    "bounded_call",
    "check_score",
    "is_correct",
]

logger = logging.getLogger(__name__)

GradeStatus = Literal["ok", "unscorable", "timeout"]
"""``"ok"``: the verifier returned a float; ``"unscorable"``: it returned None; ``"timeout"``: it
overran the time limit or its worker died."""

CORRECT_THRESHOLD = 0.5
"""A score counts as *correct* when it is >= this: the one definition the env's ``info["correct"]``,
the reward wrappers, ``group_stats`` and ERPO's outcomes all use (see :func:`is_correct`)."""


def is_correct(score: float | None) -> bool | None:
    """Whether a score is correct (``score >= CORRECT_THRESHOLD``); None stays None (unscorable)."""
    return None if score is None else bool(score >= CORRECT_THRESHOLD)


WORKER_START_TIMEOUT = 120.0
"""Seconds a new worker may take to import the library and load the verifier (not part of any
grade's time limit)."""

_STOP_GRACE = 0.5  # seconds a worker gets to exit after SIGTERM before SIGKILL
_CPU_GRACE = 1.0  # CPU seconds past the timeout after which a task's worker kills itself (RLIMIT_CPU)
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


@dataclass(frozen=True)
class Grade:
    """The outcome of grading one response.

    Attributes:
        score: The verifier's score, or None when unscorable or timed out.
        status: ``"ok"``, ``"unscorable"`` or ``"timeout"``.
        seconds: Wall-clock seconds the grade took (for pooled grades, including the round trip).
        detail: Why a ``"timeout"`` happened (time limit, or the worker's exit code); empty otherwise.
    """

    score: float | None
    status: GradeStatus
    seconds: float
    detail: str = ""


class VerifierError(RuntimeError):
    """A verifier raised or returned something other than ``float | None``: a bug to fix, not a 0."""


class VerifierTimeout(TimeoutError):
    """A direct verifier call (outside :class:`Grader`) ran past its time limit; see :func:`bounded_call`."""


def _unbounded(verifier: Any) -> Any:
    # What the Grader runs: a verifier's raw computation when it has one (a direct call of a shipped
    # verifier is itself bounded by a worker; the Grader keeps its own time instead).
    compute = getattr(verifier, "compute", None)
    return compute if callable(compute) else verifier


def check_score(value: object, verifier: object) -> float | None:
    """``value`` as ``float | None``, or :class:`VerifierError` when a verifier returned anything else.

    Any real number is accepted (``bool``, ``int``, NumPy scalars) and converted with ``float``.
    NaN and infinities are rejected: they would poison every advantage in the group.
    """
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        score = float(value)
        if math.isfinite(score):
            return score
        raise VerifierError(
            f"Expected verifier {verifier!r} to return a finite float or None, got {score!r}; "
            "return None for answers that cannot be scored."
        )
    raise VerifierError(
        f"Expected verifier {verifier!r} to return float | None, got {type(value).__name__} "
        f"{_short_repr(value)}; return 1.0/0.0 for right/wrong and None for unscorable."
    )


def _short_repr(value: object, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _grade_from_score(score: float | None, seconds: float) -> Grade:
    return Grade(score, "ok" if score is not None else "unscorable", seconds)


# -- worker side -------------------------------------------------------------------------------------------
# Runs in a fresh interpreter. First it arranges to die with its parent (before any import that could
# take time), then it reads sys.path and the pickled verifier before importing anything else, so the
# child resolves modules exactly as the parent does. argv: connection fd, parent pid, timeout.
_BOOTSTRAP = (
    "import os, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    try:\n"
    "        import ctypes\n"
    f"        ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, 9, 0, 0, 0)\n"
    "    except Exception:\n"
    "        pass\n"
    "if os.getppid() != int(sys.argv[2]):\n"
    "    os._exit(1)\n"
    "from multiprocessing.connection import Connection\n"
    "conn = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = conn.recv()\n"
    "payload = conn.recv_bytes()\n"
    "from deepgrpo_env.grading import _worker_main\n"
    "_worker_main(conn, payload, float(sys.argv[3]))\n"
)


def _exit_when_orphaned(parent_pid: int) -> None:
    # Fallback where PR_SET_PDEATHSIG does not exist: an idle worker notices its parent is gone.
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _limit_cpu(seconds: float) -> None:
    """Lets this process use at most ``seconds`` more CPU time (then the kernel sends SIGXCPU)."""
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + seconds)
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - no resource module / not allowed
        pass


_IN_WORKER = False
"""True inside a grading worker: verifiers called there compute directly (the parent keeps time)."""


def _worker_main(conn: Connection, payload: bytes, timeout: float = math.inf) -> None:
    """A worker's loop: load the verifier, say ready, then answer ``(response, reference)`` tasks."""
    global _IN_WORKER
    _IN_WORKER = True
    if not sys.platform.startswith("linux"):
        threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    # Ctrl-C goes to the trainer, which stops the workers; a worker never dies of SIGINT mid-reply.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_cpu(WORKER_START_TIMEOUT + _CPU_GRACE)
    try:
        verifier = cloudpickle.loads(payload)
        warmup = getattr(verifier, "warmup", None)
        if callable(warmup):
            warmup()
    except Exception:
        conn.send(("init_error", traceback.format_exc()))
        return
    try:
        conn.send(("ready", None))
        while (task := conn.recv()) is not None:
            response, reference = task
            if math.isfinite(timeout):
                _limit_cpu(timeout + _CPU_GRACE)  # backstop: outlives the parent's timer only by a second
            try:
                score = check_score(_unbounded(verifier)(response, reference), verifier)
            except Exception:
                conn.send(("error", traceback.format_exc()))
            else:
                conn.send(("ok", score))
    except (EOFError, OSError):
        return  # the parent closed its end or died: nothing left to do


# -- parent side -------------------------------------------------------------------------------------------
class _Spawner:
    """Starts worker processes from one long-lived thread of this process.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that started a child exits, so a worker started from
    a caller's short-lived thread would be killed with that thread. One daemon thread per process
    (restarted after ``os.fork()``) does every ``Popen``; it lives as long as the process does.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._requests: queue.SimpleQueue[tuple[list[str], dict[str, Any], dict[str, Any], threading.Event]]

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        if not sys.platform.startswith("linux"):
            return subprocess.Popen(args, **kwargs)
        with self._lock:
            if self._pid != os.getpid():
                self._requests = queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._requests,), name="deepgrpo-grader-spawner",
                                 daemon=True).start()
                self._pid = os.getpid()
            requests = self._requests
        box: dict[str, Any] = {}
        done = threading.Event()
        requests.put((args, kwargs, box, done))
        done.wait()
        if "error" in box:
            raise box["error"]
        proc: subprocess.Popen[bytes] = box["proc"]
        return proc

    @staticmethod
    def _serve(requests: queue.SimpleQueue[Any]) -> None:
        while True:
            args, kwargs, box, done = requests.get()
            try:
                box["proc"] = subprocess.Popen(args, **kwargs)
            except BaseException as e:  # handed to the caller, which raises it
                box["error"] = e
            done.set()


_SPAWNER = _Spawner()


class _Worker:
    """One worker subprocess and the parent's end of its connection."""

    def __init__(self, payload: bytes, timeout: float = math.inf) -> None:
        parent_conn, child_conn = Pipe(duplex=True)
        fd = child_conn.fileno()
        self.proc = _SPAWNER.popen(
            [sys.executable, "-c", _BOOTSTRAP, str(fd), str(os.getpid()), repr(float(timeout))],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            # Own process group: the whole group can be killed, and Ctrl-C reaches only the parent.
            # The worker still dies with the parent (PR_SET_PDEATHSIG, see the module docstring).
            start_new_session=True,
        )
        child_conn.close()
        self.owner = os.getpid()  # a forked copy of this handle must not touch the worker
        self.conn = parent_conn
        self.started = time.monotonic()
        self.ready = False
        self.task: int | None = None  # index into the current batch
        self.task_start = 0.0
        parent_conn.send(list(sys.path))
        parent_conn.send_bytes(payload)

    def stop(self) -> None:
        """Kills the worker's process group (SIGTERM, then SIGKILL) and reaps it."""
        self.conn.close()
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(_STOP_GRACE)
                return
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()


def _shutdown(workers: list[_Worker]) -> None:
    """Asks idle workers to exit, then stops whatever is left. Safe to call more than once.

    Workers inherited through ``os.fork()`` belong to the parent: they are dropped, not stopped.
    """
    workers[:] = [w for w in workers if w.owner == os.getpid()]
    for w in workers:
        with contextlib.suppress(OSError, ValueError):  # already closed or broken: stop() handles it
            w.conn.send(None)
    deadline = time.monotonic() + 1.0
    for w in workers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        w.stop()
    workers.clear()


class Grader:
    """Runs a verifier with a hard per-call timeout in worker processes.

    Workers start lazily on the first grade and are reused. A call that overruns ``timeout`` gets
    ``Grade(None, "timeout", ...)`` and its worker is killed and replaced; so does a call whose
    worker dies (segfault, out-of-memory kill), with the exit code in ``Grade.detail``. The timer
    covers only the verifier call: starting a worker and a verifier's optional ``warmup()`` (run once
    per worker, e.g. :meth:`~deepgrpo_env.verifiers.MathVerifier.warmup` imports math-verify) are not
    counted. Works from any thread and inside other pools' worker processes. Calls from several
    threads are serialized. A process forked from the owner starts its own workers on first use.

    Verifiers marked ``inline_safe = True`` (bounded, linear-time ones such as
    :class:`~deepgrpo_env.verifiers.NumericVerifier`) run in the calling process instead, with no
    timeout and no process overhead.

    Example:
        >>> with Grader(MathVerifier(), timeout=5.0, num_workers=2) as grader:  # doctest: +SKIP
        ...     grader.grade("so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5")
        Grade(score=1.0, status='ok', seconds=0.004, detail='')

    Args:
        verifier: ``(response, reference) -> float | None``. Pooled graders send it to the workers
            with cloudpickle, so lambdas and closures work.
        timeout: Hard limit in seconds for one verifier call (pooled grading only).
        num_workers: Worker processes; :meth:`grade_many` grades this many responses at once.
        inline: Run in the calling process without a timeout. None (default) follows the verifier's
            ``inline_safe`` attribute (False when it has none). Only for verifiers whose running
            time is bounded by construction.

    Raises:
        TypeError: If ``verifier`` is not callable, or is pooled and cannot be pickled.
        ValueError: If ``timeout`` or ``num_workers`` is out of range.
    """

    def __init__(
        self, verifier: Verifier, *, timeout: float = 5.0, num_workers: int = 1, inline: bool | None = None
    ) -> None:
        if not callable(verifier):
            raise TypeError(
                f"Expected `verifier` callable (response, reference) -> float | None, got {type(verifier).__name__}."
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"Expected `timeout` a finite number of seconds > 0, got {timeout!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"Expected `num_workers` an int >= 1, got {num_workers!r}.")
        if inline is not None and not isinstance(inline, bool):
            raise TypeError(f"Expected `inline` True, False or None, got {inline!r}.")
        self.verifier = verifier
        self.timeout = float(timeout)
        self.num_workers = num_workers
        self.inline: bool = bool(getattr(verifier, "inline_safe", False)) if inline is None else inline
        self._payload = None if self.inline else self._pickle_verifier()
        self._workers: list[_Worker] = []  # mutated in place: the finalizer holds this list
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # -- public API ---------------------------------------------------------------------------------------
    def grade(self, response: str, reference: str) -> Grade:
        """Grades one response.

        Raises:
            VerifierError: If the verifier raised (the worker's traceback is in the message) or
                returned something other than ``float | None``.
        """
        return self.grade_many([(response, reference)])[0]

    def grade_many(self, pairs: Sequence[tuple[str, str]]) -> list[Grade]:
        """Grades ``(response, reference)`` pairs, up to ``num_workers`` at once; results keep their order.

        Each call has its own hard timeout.

        Raises:
            TypeError: If a pair is not two strings.
            VerifierError: As :meth:`grade`; the first failure stops the batch.
        """
        batch = [_check_pair(pair, i) for i, pair in enumerate(pairs)]
        if not batch:
            return []
        with self._lock:
            if self.inline:
                return [self._grade_inline(response, reference) for response, reference in batch]
            self._forget_inherited_workers()
            return self._grade_pooled(batch)

    def start(self) -> None:
        """Starts any missing workers now and waits until all are ready (else the first grade waits).

        Starting a worker (a fresh interpreter importing the library and loading the verifier) takes
        about a second and does not count against any grade's timeout. A no-op for inline graders.

        Raises:
            VerifierError: If the verifier cannot be loaded in a worker.
            RuntimeError: If a worker dies or hangs while starting.
        """
        if self.inline:
            return
        with self._lock:
            self._forget_inherited_workers()
            while len(self._workers) < self.num_workers:
                self._workers.append(self._new_worker())
            while any(not w.ready for w in self._workers):
                self._collect([])
                self._expire([])

    def close(self) -> None:
        """Stops the workers. The grader stays usable: a later grade starts new ones."""
        with self._lock:
            _shutdown(self._workers)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort only: the weakref finalizer also stops workers at garbage collection and exit.
        try:
            if getattr(self, "_workers", None):
                _shutdown(self._workers)
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        payload = self._payload if self._payload is not None else self._pickle_verifier()
        return {
            "verifier": payload,
            "timeout": self.timeout,
            "num_workers": self.num_workers,
            "inline": self.inline,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        verifier = cloudpickle.loads(state["verifier"])
        self.__init__(  # type: ignore[misc]
            verifier, timeout=state["timeout"], num_workers=state["num_workers"], inline=state["inline"]
        )

    def __repr__(self) -> str:
        return (
            f"Grader({self.verifier!r}, timeout={self.timeout}, num_workers={self.num_workers}, "
            f"inline={self.inline})"
        )

    # -- internals ----------------------------------------------------------------------------------------
    def _pickle_verifier(self) -> bytes:
        try:
            data: bytes = cloudpickle.dumps(self.verifier)
            return data
        except Exception as e:
            raise TypeError(
                f"Expected a picklable verifier (it runs in worker processes), but cloudpickle cannot "
                f"serialize {self.verifier!r}: {e}. Make it picklable, or pass inline=True if its running "
                "time is bounded."
            ) from e

    def _grade_inline(self, response: str, reference: str) -> Grade:
        start = time.perf_counter()
        try:
            value = _unbounded(self.verifier)(response, reference)
        except Exception as e:
            raise VerifierError(f"Verifier {self.verifier!r} raised {type(e).__name__}: {e}") from e
        return _grade_from_score(check_score(value, self.verifier), time.perf_counter() - start)

    def _grade_pooled(self, batch: list[tuple[str, str]]) -> list[Grade]:
        results: list[Grade | None] = [None] * len(batch)
        queue = deque(range(len(batch)))
        while len(self._workers) < min(self.num_workers, len(batch)):
            self._workers.append(self._new_worker())
        try:
            while queue or any(w.task is not None for w in self._workers):
                for w in self._workers:
                    if queue and w.ready and w.task is None:
                        w.task, w.task_start = queue.popleft(), time.monotonic()
                        w.conn.send(batch[w.task])
                self._collect(results)
                self._expire(results)
        except BaseException:
            # A worker still busy would later send a reply nobody asked for: stop it.
            for w in [w for w in self._workers if w.task is not None]:
                self._workers.remove(w)
                w.stop()
            raise
        assert all(r is not None for r in results)  # internal invariant: every task got a grade
        return results  # type: ignore[return-value]

    def _forget_inherited_workers(self) -> None:
        # After os.fork() the child holds copies of the parent's connections; using them would
        # interleave both processes' messages. The workers belong to the parent: start our own.
        pid = os.getpid()
        self._workers[:] = [w for w in self._workers if w.owner == pid]

    def _new_worker(self) -> _Worker:
        assert self._payload is not None  # pooled graders pickle their verifier in __init__
        return _Worker(self._payload, self.timeout)

    def _replace(self, w: _Worker) -> None:
        w.stop()
        self._workers[self._workers.index(w)] = self._new_worker()

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        deadlines = [
            (w.task_start + self.timeout) if w.ready else (w.started + WORKER_START_TIMEOUT)
            for w in self._workers
            if w.task is not None or not w.ready
        ]
        return max(0.0, min(deadlines) - now) if deadlines else 0.0

    def _collect(self, results: list[Grade | None]) -> None:
        """Waits until the next deadline for replies, then handles every reply that came."""
        waiting = {w.conn: w for w in self._workers if w.task is not None or not w.ready}
        for ready in wait(list(waiting), self._next_wakeup()):
            w = waiting[cast(Connection, ready)]
            try:
                kind, value = w.conn.recv()
            except (EOFError, OSError):
                self._on_death(w, results)
                continue
            if kind == "ready":
                w.ready = True
            elif kind == "ok":
                assert w.task is not None
                results[w.task] = _grade_from_score(value, time.monotonic() - w.task_start)
                w.task = None
            elif kind == "error":
                w.task = None  # the worker itself is fine and idle again
                raise VerifierError(
                    f"Verifier {self.verifier!r} raised in a grading worker; its traceback:\n{value}"
                )
            else:  # "init_error"
                self._workers.remove(w)
                w.stop()
                raise VerifierError(
                    f"Could not load verifier {self.verifier!r} in a grading worker:\n{value}"
                )

    def _on_death(self, w: _Worker, results: list[Grade | None]) -> None:
        try:
            code = w.proc.wait(_STOP_GRACE)
        except subprocess.TimeoutExpired:
            code = None
        if not w.ready:
            self._workers.remove(w)
            w.stop()
            raise RuntimeError(
                f"A grading worker exited (code {code}) before loading verifier {self.verifier!r}; "
                "its stderr above says why (is `deepgrpo_env` importable from `sys.path`?)."
            )
        assert w.task is not None
        detail = f"worker died (exit code {code}) while grading; replaced"
        logger.warning(
            "Grading worker for %r died (exit code %s); the grade counts as a timeout.", self.verifier, code
        )
        results[w.task] = Grade(None, "timeout", time.monotonic() - w.task_start, detail)
        self._replace(w)

    def _expire(self, results: list[Grade | None]) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.task is not None and now - w.task_start >= self.timeout:
                detail = f"exceeded the {self.timeout:g} s limit; worker killed and replaced"
                results[w.task] = Grade(None, "timeout", now - w.task_start, detail)
                self._replace(w)
            elif not w.ready and now - w.started >= WORKER_START_TIMEOUT:
                self._workers.remove(w)
                w.stop()
                raise RuntimeError(
                    f"A grading worker did not start within {WORKER_START_TIMEOUT:g} s; the machine may be "
                    "overloaded (fewer `num_workers` helps)."
                )


def _check_pair(pair: object, index: int) -> tuple[str, str]:
    if (
        not isinstance(pair, (tuple, list))
        or len(pair) != 2
        or not isinstance(pair[0], str)
        or not isinstance(pair[1], str)
    ):
        raise TypeError(
            f"Expected `pairs[{index}]` to be (response: str, reference: str), got {_short_repr(pair)}."
        )
    return pair[0], pair[1]


# -- bounded direct calls ------------------------------------------------------------------------------------
_DIRECT: dict[Any, Grader] = {}
_DIRECT_LOCK = threading.Lock()


def bounded_call(verifier: Any, response: str, reference: str, timeout: float, key: Any) -> float | None:
    """Runs ``verifier.compute(response, reference)`` in a grading worker with a hard ``timeout``.

    This is how a direct call of a shipped verifier that is not ``inline_safe`` (``MathVerifier()(r, g)``
    in a notebook or inside a user's reward function) stays bounded in any thread and in any process:
    one :class:`Grader` per verifier configuration (``key``) is kept for the life of the process and
    started on the first call (about a second). Inside a grading worker the computation runs directly:
    the worker's parent already keeps time.

    Raises:
        VerifierTimeout: If the call ran past ``timeout`` seconds (or its worker died).
        VerifierError: If the verifier raised.
    """
    if _IN_WORKER:
        value: float | None = _unbounded(verifier)(response, reference)
        return value
    with _DIRECT_LOCK:
        grader = _DIRECT.get(key)
        if grader is None:
            grader = _DIRECT[key] = Grader(verifier, timeout=timeout, num_workers=1, inline=False)
    grade = grader.grade(response, reference)
    if grade.status == "timeout":
        raise VerifierTimeout(
            f"{verifier!r} did not finish within {timeout:g} s on this answer ({grade.detail}); the answer "
            "is too costly to check symbolically. Score it as wrong, raise `timeout=`, or grade through "
            "deepgrpo_env.Grader, which reports Grade(status='timeout') instead of raising."
        )
    return grade.score
