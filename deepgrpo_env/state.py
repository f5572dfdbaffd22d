"""EnvState: the explicit, immutable value that snapshot() returns and reset_to() restores."""

from __future__ import annotations

import dataclasses
import pickle
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
        rng_state: Pickled state of the env's random generator at snapshot time.
        fingerprint: Identity of the env configuration (tokenizer, problems, template, limits);
            restoring into an env with another fingerprint is refused.
    """

    problem_index: int
    problem: Problem
    prompt_ids: TokenArray
    response_ids: TokenArray
    terminated: bool
    truncated: bool
    rng_state: bytes
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
    rng_state: bytes,
    fingerprint: str,
) -> EnvState:
    prompt_ids.setflags(write=False)
    response_ids.setflags(write=False)
    return EnvState(
        problem_index, problem, prompt_ids, response_ids, terminated, truncated, rng_state, fingerprint
    )


def dump_rng(rng: np.random.Generator) -> bytes:
    """Serializes a generator's exact state."""
    return pickle.dumps(rng.bit_generator.state)


def load_rng(blob: bytes) -> np.random.Generator:
    """Rebuilds a generator from :func:`dump_rng` output."""
    state = pickle.loads(blob)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)
