"""Problem sources: where an environment's problems come from (a fixed dataset or a generator)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from deepgrpo_env.problems import Problem


@runtime_checkable
class ProblemSource(Protocol):
    """An indexable collection of problems.

    ``problem(i)`` must be a pure function of ``i`` so that a snapshot, which stores the index and the
    problem, restores the same episode in a freshly made env.
    """

    def __len__(self) -> int: ...

    def problem(self, index: int) -> Problem:
        """The problem at ``index`` (0 <= index < len(self))."""
        ...

    def fingerprint(self) -> str:
        """A short stable hash identifying the collection."""
        ...


class DatasetSource:
    """A fixed, ordered tuple of problems (a dataset split, a JSONL file, a list)."""

    def __init__(self, problems: Sequence[Problem], name: str = "custom") -> None:
        if len(problems) == 0:
            raise ValueError(f"Expected at least one problem in source {name!r}, got none.")
        self.problems = tuple(problems)
        self.name = name
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.problems)

    def problem(self, index: int) -> Problem:
        if not 0 <= index < len(self.problems):
            raise IndexError(
                f"Expected a problem index in [0, {len(self.problems)}) for {self.name!r}, got {index}."
            )
        return self.problems[index]

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha1()
            for p in self.problems:
                h.update(f"{p.id}\x00{p.question}\x00{p.reference}\x01".encode())
            self._fingerprint = f"{self.name}:{len(self.problems)}:{h.hexdigest()[:12]}"
        return self._fingerprint

    def __repr__(self) -> str:
        return f"DatasetSource({self.name!r}, {len(self.problems)} problems)"
