"""The pure episode core shared by the single env and the native vector env.

One ``EpisodeCore`` holds ``n`` episodes as rows of numpy arrays. The single env is a core with one row;
the vector env is a core with ``num_envs`` rows. Token storage is append-only per episode: positions are
written once, so a snapshot can keep a read-only *view* of a row instead of copying it. A row that a
snapshot still views is "pinned"; before a pinned row is rewritten (reset, reset_to) the buffer is
replaced by a copy, leaving the old one to the snapshots.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from deepgrpo_env.codec import Codec
from deepgrpo_env.problems import Problem
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.sources import ProblemSource
from deepgrpo_env.state import EnvState, dump_rng, load_rng
from deepgrpo_env.types import TokenArray

_PROMPT_CACHE_SIZE = 65_536


@dataclass(frozen=True)
class EpisodeLimits:
    """Sizes that fix an env's observation shape.

    Attributes:
        max_prompt_tokens: Longest prompt accepted; longer prompts raise at reset.
        max_response_tokens: Response budget; reaching it truncates the episode.
    """

    max_prompt_tokens: int = 512
    max_response_tokens: int = 512

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_response_tokens"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"Expected `{name}` to be an int >= 1, got {value!r}.")

    @property
    def max_total_tokens(self) -> int:
        """Width of the observation's token array."""
        return self.max_prompt_tokens + self.max_response_tokens


class EpisodeCore:
    """``n`` token-level episodes stored row-wise; see the module docstring for the storage contract."""

    def __init__(
        self,
        num_rows: int,
        codec: Codec,
        source: ProblemSource,
        template: PromptTemplate,
        limits: EpisodeLimits,
    ) -> None:
        self.n = int(num_rows)
        self.codec = codec
        self.source = source
        self.template = template
        self.limits = limits
        self.vocab_size = int(codec.vocab_size)
        self.fingerprint = "|".join(
            [
                f"tok={codec.fingerprint()}",
                f"data={source.fingerprint()}",
                f"prompt={template.fingerprint()}",
                f"limits={limits.max_prompt_tokens}/{limits.max_response_tokens}",
            ]
        )
        self.is_stop = np.zeros(self.vocab_size, dtype=bool)
        self.is_stop[list(codec.stop_token_ids)] = True
        width = limits.max_total_tokens
        self.tokens = np.full((self.n, width), codec.pad_token_id, dtype=np.int64)
        self.prompt_len = np.zeros(self.n, dtype=np.int64)
        self.resp_len = np.zeros(self.n, dtype=np.int64)
        self.terminated = np.zeros(self.n, dtype=bool)
        self.truncated = np.zeros(self.n, dtype=bool)
        self.started = np.zeros(self.n, dtype=bool)
        self.pinned = np.zeros(self.n, dtype=bool)
        self.problem_index = np.full(self.n, -1, dtype=np.int64)
        self.problems: list[Problem | None] = [None] * self.n
        self.prompts: list[TokenArray | None] = [None] * self.n
        self.rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(self.n)]
        self._prompt_cache: OrderedDict[int, TokenArray] = OrderedDict()

    # -- prompts ---------------------------------------------------------------------------------
    def prompt_ids(self, index: int) -> tuple[Problem, TokenArray]:
        """The problem at ``index`` and its (cached, read-only, shared) prompt ids."""
        problem = self.source.problem(index)
        ids = self._prompt_cache.get(index)
        if ids is None:
            ids = self.template.encode(self.codec, problem.question)
            if ids.shape[0] > self.limits.max_prompt_tokens:
                raise ValueError(
                    f"Problem {problem.id!r} has a {ids.shape[0]}-token prompt but `max_prompt_tokens` "
                    f"is {self.limits.max_prompt_tokens}; make the env with "
                    f"max_prompt_tokens={ids.shape[0]} (or more)."
                )
            self._prompt_cache[index] = ids
            if len(self._prompt_cache) > _PROMPT_CACHE_SIZE:
                self._prompt_cache.popitem(last=False)
        else:
            self._prompt_cache.move_to_end(index)
        return problem, ids

    # -- writing rows ----------------------------------------------------------------------------
    def _unpin(self, row: int) -> None:
        if self.pinned[row]:
            # Snapshots view the current buffer; give them the old one and continue in a copy.
            self.tokens = self.tokens.copy()
            self.pinned[:] = False

    def _write_row(
        self, row: int, index: int, problem: Problem, prompt: TokenArray, response: TokenArray
    ) -> None:
        self._unpin(row)
        p, r = prompt.shape[0], response.shape[0]
        line = self.tokens[row]
        line[:p] = prompt
        line[p : p + r] = response
        line[p + r :] = self.codec.pad_token_id
        self.prompt_len[row] = p
        self.resp_len[row] = r
        self.problem_index[row] = index
        self.problems[row] = problem
        self.prompts[row] = prompt
        self.started[row] = True

    def begin(self, row: int, index: int | None = None) -> None:
        """Starts a new episode in ``row``: problem ``index``, or one drawn with the row's generator."""
        n_problems = len(self.source)
        if index is None:
            index = int(self.rngs[row].integers(n_problems))
        elif not isinstance(index, (int, np.integer)) or not 0 <= index < n_problems:
            raise ValueError(
                f"Expected `problem_index` to be an int in [0, {n_problems}), got {index!r}."
            )
        problem, prompt = self.prompt_ids(int(index))
        self._write_row(row, int(index), problem, prompt, prompt[:0])
        self.terminated[row] = False
        self.truncated[row] = False

    def push(self, rows: npt.NDArray[np.intp], actions: npt.NDArray[np.int64]) -> None:
        """Appends ``actions[k]`` to the episode in ``rows[k]`` and updates the end flags."""
        pos = self.prompt_len[rows] + self.resp_len[rows]
        self.tokens[rows, pos] = actions
        self.resp_len[rows] += 1
        term = self.is_stop[actions]
        self.terminated[rows] = term
        self.truncated[rows] = ~term & (self.resp_len[rows] >= self.limits.max_response_tokens)

    def push_one(self, row: int, action: int) -> None:
        """Scalar fast path of :meth:`push` for the single env."""
        r = int(self.resp_len[row])
        self.tokens[row, int(self.prompt_len[row]) + r] = action
        self.resp_len[row] = r + 1
        term = bool(self.is_stop[action])
        self.terminated[row] = term
        self.truncated[row] = (not term) and r + 1 >= self.limits.max_response_tokens

    # -- validation ------------------------------------------------------------------------------
    def check_actions(self, actions: Any, count: int) -> npt.NDArray[np.int64]:
        """Returns ``actions`` as an int64 array of ``count`` token ids, or raises a clear error."""
        arr = np.asarray(actions)
        if arr.shape != (count,) or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                f"Expected actions as {count} integer token ids (shape ({count},)), got "
                f"shape {arr.shape} dtype {arr.dtype}."
            )
        if count and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = arr[(arr < 0) | (arr >= self.vocab_size)][0]
            raise ValueError(
                f"Expected token ids in [0, {self.vocab_size}) (the action space), got {int(bad)}."
            )
        return arr.astype(np.int64, copy=False)

    # -- snapshots -------------------------------------------------------------------------------
    def snapshot(self, row: int) -> EnvState:
        """An immutable :class:`EnvState` of ``row`` that shares its token storage."""
        if not self.started[row]:
            raise RuntimeError("Cannot snapshot an env before reset(); call reset() first.")
        p, r = int(self.prompt_len[row]), int(self.resp_len[row])
        response = self.tokens[row, p : p + r]
        response.setflags(write=False)
        self.pinned[row] = True
        prompt = self.prompts[row]
        problem = self.problems[row]
        assert prompt is not None and problem is not None  # started rows always have both
        return EnvState(
            problem_index=int(self.problem_index[row]),
            problem=problem,
            prompt_ids=prompt,
            response_ids=response,
            terminated=bool(self.terminated[row]),
            truncated=bool(self.truncated[row]),
            rng_state=dump_rng(self.rngs[row]),
            fingerprint=self.fingerprint,
        )

    def check_state(self, state: Any) -> EnvState:
        """Validates that ``state`` can be restored here."""
        if not isinstance(state, EnvState):
            raise TypeError(
                f"Expected an EnvState from env.snapshot(), got {type(state).__name__}."
            )
        if state.fingerprint != self.fingerprint:
            mine = dict(part.split("=", 1) for part in self.fingerprint.split("|"))
            theirs = dict(part.split("=", 1) for part in state.fingerprint.split("|") if "=" in part)
            diff = [k for k in mine if mine.get(k) != theirs.get(k)]
            raise ValueError(
                "Cannot restore a state taken from an env with a different configuration "
                f"(differs in: {', '.join(diff) or 'fingerprint'}; state {state.fingerprint!r} vs "
                f"env {self.fingerprint!r}). Restore it into an env made with the same tokenizer, "
                "dataset, prompt template and token limits."
            )
        if state.depth > self.limits.max_response_tokens:
            raise ValueError(
                f"State depth {state.depth} exceeds `max_response_tokens`={self.limits.max_response_tokens}."
            )
        return state

    def restore(self, row: int, state: EnvState) -> None:
        """Makes ``row`` continue exactly from ``state`` (tokens, flags, problem and generator)."""
        self.check_state(state)
        self._write_row(row, state.problem_index, state.problem, state.prompt_ids, state.response_ids)
        self.terminated[row] = state.terminated
        self.truncated[row] = state.truncated
        self.rngs[row] = load_rng(state.rng_state)

    # -- reading rows ----------------------------------------------------------------------------
    def response_ids(self, row: int) -> TokenArray:
        """A copy of the response tokens of ``row``."""
        p = int(self.prompt_len[row])
        return self.tokens[row, p : p + int(self.resp_len[row])].copy()

    def text(self, row: int) -> str:
        """Decoded prompt and response of ``row`` (for render())."""
        p, r = int(self.prompt_len[row]), int(self.resp_len[row])
        return self.codec.decode(self.tokens[row, : p + r].tolist())

    def observation_row(self, row: int) -> dict[str, np.ndarray]:
        """A fresh copy of one row's observation."""
        p, r = int(self.prompt_len[row]), int(self.resp_len[row])
        return {
            "input_ids": self.tokens[row].copy(),
            "length": np.array([p + r], dtype=np.int64),
            "prompt_length": np.array([p], dtype=np.int64),
        }


def rows_of(indices: Sequence[int] | None, n: int) -> list[int]:
    """Validates a list of sub-env indices (``None`` = all)."""
    if indices is None:
        return list(range(n))
    out = [int(i) for i in indices]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise IndexError(f"Expected env indices in [0, {n}), got {bad}.")
    if len(set(out)) != len(out):
        raise ValueError(f"Expected distinct env indices, got {out}.")
    return out
