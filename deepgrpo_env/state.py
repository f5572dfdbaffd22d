"""EnvState: the explicit, immutable value that snapshot() returns and reset_to() restores."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepgrpo_env.problems import Problem
from deepgrpo_env.types import TokenArray


@dataclass(frozen=True, eq=False)
class EnvState:
    """Everything needed to continue an episode exactly.

    Snapshots are cheap: ``prompt_ids`` is shared by every snapshot of an episode and
    ``response_ids`` is a read-only view of the episode's append-only token buffer, so taking a
    snapshot copies no tokens. Both arrays are read-only; pickling copies just the tokens it needs.

    Attributes:
        problem_index: Index of the problem in the env's problem source.
        problem: The problem itself (id, question, reference answer).
        prompt_ids: Prompt token ids, shape (P,), read-only.
        response_ids: Response token ids emitted so far, shape (depth,), read-only.
        terminated: The episode ended with a stop token.
        truncated: The episode ran out of response tokens.
        rng_state: State of the env's random generator at snapshot time, as plain data: the NumPy
            bit generator's state dict (``{"bit_generator": "PCG64", "state": {...}, ...}``) holding
            only strings and integers (lists of integers for MT19937's key). It is never unpickled or
            evaluated: ``reset_to`` validates it and hands it to NumPy's state setter.
        fingerprint: Identity of the env configuration (tokenizer, problems, template, limits);
            restoring into an env with another fingerprint is refused.
    """

    problem_index: int
    problem: Problem
    prompt_ids: TokenArray
    response_ids: TokenArray
    terminated: bool
    truncated: bool
    rng_state: dict[str, Any]
    fingerprint: str

    @property
    def depth(self) -> int:
        """Number of response tokens emitted (= env steps taken since reset)."""
        return int(self.response_ids.shape[0])

    @property
    def steps(self) -> int:
        """Env steps taken since reset (one token per step), the same as :attr:`depth`."""
        return self.depth

    @property
    def done(self) -> bool:
        """The episode has ended (terminated or truncated)."""
        return self.terminated or self.truncated

    def prefix(self, depth: int) -> EnvState:
        """The state of the same episode after only ``depth`` response tokens (not ended).

        Exact because stepping appends tokens and never draws from the env's generator: an earlier
        state differs from a later one only in its response and end flags. This is how pivots inside a
        finished trajectory are restored without having snapshotted every depth.
        """
        if not 0 <= depth <= self.depth:
            raise ValueError(f"Expected 0 <= `depth` <= {self.depth}, got {depth}.")
        if depth == self.depth and self.done:
            raise ValueError("The full-depth prefix of an ended episode is the ended state itself; pick a smaller depth.")
        view = self.response_ids[:depth]
        return dataclasses.replace(self, response_ids=view, terminated=False, truncated=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvState):
            return NotImplemented
        return (
            self.problem_index == other.problem_index
            and self.problem == other.problem
            and np.array_equal(self.prompt_ids, other.prompt_ids)
            and np.array_equal(self.response_ids, other.response_ids)
            and self.terminated == other.terminated
            and self.truncated == other.truncated
            and self.rng_state == other.rng_state
            and self.fingerprint == other.fingerprint
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays: equality, not identity, matters

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle plain copies of the arrays; they come back read-only.
        return (
            _rebuild_state,
            (
                self.problem_index,
                self.problem,
                np.array(self.prompt_ids),
                np.array(self.response_ids),
                self.terminated,
                self.truncated,
                self.rng_state,
                self.fingerprint,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"EnvState(problem={self.problem.id!r}, depth={self.depth}, "
            f"terminated={self.terminated}, truncated={self.truncated})"
        )


def _rebuild_state(
    problem_index: int,
    problem: Problem,
    prompt_ids: np.ndarray,
    response_ids: np.ndarray,
    terminated: bool,
    truncated: bool,
    rng_state: dict[str, Any],
    fingerprint: str,
) -> EnvState:
    prompt_ids.setflags(write=False)
    response_ids.setflags(write=False)
    return EnvState(
        problem_index, problem, prompt_ids, response_ids, terminated, truncated, rng_state, fingerprint
    )


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
"""NumPy bit generators whose state a snapshot may carry (by name; nothing else is looked up)."""


def _plain(value: Any) -> Any:
    # ndarray -> list, NumPy integers -> int, recursively: the state becomes JSON-compatible data.
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [int(x) for x in value.ravel()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def dump_rng(rng: np.random.Generator) -> dict[str, Any]:
    """A generator's exact state as plain data (strings and integers), see :attr:`EnvState.rng_state`."""
    state: dict[str, Any] = _plain(rng.bit_generator.state)
    return state


def load_rng(state: Any) -> np.random.Generator:
    """Rebuilds a generator from :func:`dump_rng` output, validating it first.

    Raises:
        ValueError: If ``state`` is not a bit generator state of a known NumPy bit generator (the
            message says which part is wrong).
    """
    if not isinstance(state, dict):
        raise ValueError(
            f"Expected `rng_state` to be the dict that env.snapshot() stores (a NumPy bit generator "
            f"state), got {type(state).__name__}. Take states from env.snapshot(); do not build them by hand."
        )
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise ValueError(
            f"Expected `rng_state['bit_generator']` in {list(_BIT_GENERATORS)}, got {name!r}."
        )
    if not _only_plain(state):
        raise ValueError(
            "Expected `rng_state` to hold only strings, integers and lists/dicts of them (plain data), "
            "got another type inside it."
        )
    value = _arrays(copy.deepcopy(state), np.uint32 if name == "MT19937" else np.uint64)
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = value
    except (TypeError, ValueError, KeyError, OverflowError, IndexError) as e:
        raise ValueError(
            f"Invalid `rng_state` for {name}: NumPy refused it ({type(e).__name__}: {e}). "
            "Take states from env.snapshot(); do not edit them."
        ) from e
    return np.random.Generator(bit_generator)


def _only_plain(value: Any, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return len(value) <= 1024 and all(_only_plain(v, depth + 1) for v in value)
    return isinstance(value, (str, int)) and (not isinstance(value, int) or abs(value) < 2**256)


def _arrays(value: Any, dtype: Any) -> Any:
    # The inverse of _plain for NumPy's setters: lists of integers become unsigned arrays (checked range).
    if isinstance(value, dict):
        return {k: _arrays(v, dtype) for k, v in value.items()}
    if isinstance(value, list):
        top = int(np.iinfo(dtype).max)
        if not all(isinstance(v, int) and 0 <= v <= top for v in value):
            raise ValueError(
                f"Expected the lists in `rng_state` to hold integers in [0, {top}], got other values."
            )
        return np.asarray(value, dtype=dtype)
    return value
