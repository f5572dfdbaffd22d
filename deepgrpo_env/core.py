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

MAX_TOKENS_LIMIT = 1 << 20
"""Upper bound on ``max_prompt_tokens`` and on ``max_response_tokens`` (1,048,576): far beyond any
model's context, yet small enough that a typo (``10**12``) is an error, not a huge allocation."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
            if not _is_int(value) or not 1 <= value <= MAX_TOKENS_LIMIT:
                raise ValueError(
                    f"Expected `{name}` to be an int in [1, {MAX_TOKENS_LIMIT}], got {value!r}; the env "
                    f"allocates num_envs x (max_prompt_tokens + max_response_tokens) int64 ids, so use the "
                    "model's context length or less (e.g. 512)."
                )

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
        elif not _is_int(index) or not 0 <= index < n_problems:
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
        """Validates that ``state`` can be restored here (see :meth:`prepare`)."""
        self.prepare(state)  # raises unless ``state`` is an EnvState that fits this env
        checked: EnvState = state
        return checked

    def prepare(self, state: Any) -> np.random.Generator:
        """Validates every field of ``state`` against this env and returns its rebuilt generator.

        A state is plain data that may have been rebuilt from JSON or edited with
        ``dataclasses.replace``, so nothing in it is trusted: the problem must be this env's problem
        at ``problem_index``, the prompt its encoding, the response ids integers in the vocabulary
        with room for the next token when the episode is live, the flags booleans (never both set) and ``rng_state`` a
        NumPy bit generator state. Nothing is changed here, so a batch can be validated before any
        row is written.

        Raises:
            TypeError: If ``state`` is not an :class:`EnvState`.
            ValueError: Naming the first field that is wrong, what it should be and what it is.
        """
        if not isinstance(state, EnvState):
            raise TypeError(f"Expected an EnvState from env.snapshot(), got {type(state).__name__}.")
        if state.fingerprint != self.fingerprint:
            mine = dict(part.split("=", 1) for part in self.fingerprint.split("|"))
            text = state.fingerprint if isinstance(state.fingerprint, str) else ""
            theirs = dict(part.split("=", 1) for part in text.split("|") if "=" in part)
            diff = [k for k in mine if mine.get(k) != theirs.get(k)]
            raise ValueError(
                "Cannot restore a state taken from an env with a different configuration "
                f"(differs in: {', '.join(diff) or 'fingerprint'}; state {state.fingerprint!r} vs "
                f"env {self.fingerprint!r}). Restore it into an env made with the same tokenizer, "
                "dataset, prompt template and token limits."
            )
        n_problems = len(self.source)
        index = state.problem_index
        if not _is_int(index) or not 0 <= index < n_problems:
            raise ValueError(
                f"Invalid EnvState.problem_index: expected an int in [0, {n_problems}), got {index!r}."
            )
        problem, prompt = self.prompt_ids(int(index))
        if state.problem != problem:
            raise ValueError(
                f"Invalid EnvState.problem: expected this env's problem {index} ({problem.id!r}), got "
                f"{_short(state.problem)}. The problem and its index must come from the same snapshot."
            )
        if state.prompt_ids is not prompt:
            self._check_ids("prompt_ids", state.prompt_ids, self.limits.max_prompt_tokens)
            if not np.array_equal(state.prompt_ids, prompt):
                raise ValueError(
                    f"Invalid EnvState.prompt_ids: expected the env's {prompt.shape[0]}-token prompt of "
                    f"problem {problem.id!r}, got {state.prompt_ids.shape[0]} other ids."
                )
        response = state.response_ids
        self._check_ids("response_ids", response, self.limits.max_response_tokens)
        for name in ("terminated", "truncated"):
            flag = getattr(state, name)
            if not isinstance(flag, (bool, np.bool_)):
                raise ValueError(f"Invalid EnvState.{name}: expected a bool, got {flag!r}.")
        if state.terminated and state.truncated:
            raise ValueError(
                "Invalid EnvState: `terminated` and `truncated` are both True; an episode ends one way "
                "(a stop token terminates it, the response budget truncates it)."
            )
        depth = int(response.shape[0])
        budget = self.limits.max_response_tokens
        # A live episode must have room for its next token. (An ended state may be "parked": marked
        # terminated without a stop token, which rollout code uses to make a sub-env inert.)
        if not (state.terminated or state.truncated) and depth >= budget:
            raise ValueError(
                f"Invalid EnvState: a live (not ended) episode must have fewer than "
                f"`max_response_tokens`={budget} response ids, got {depth}; set `truncated` or shorten it."
            )
        return load_rng(state.rng_state)

    def _check_ids(self, name: str, ids: Any, max_len: int) -> None:
        if not isinstance(ids, np.ndarray):
            raise ValueError(f"Invalid EnvState.{name}: expected a 1-D integer numpy array, got {type(ids).__name__}.")
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"Invalid EnvState.{name}: expected a 1-D integer array, got shape {ids.shape} dtype {ids.dtype}."
            )
        if ids.shape[0] > max_len:
            limit = "max_prompt_tokens" if name == "prompt_ids" else "max_response_tokens"
            raise ValueError(f"Invalid EnvState.{name}: expected at most `{limit}`={max_len} ids, got {ids.shape[0]}.")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = ids[(ids < 0) | (ids >= self.vocab_size)][0]
            raise ValueError(
                f"Invalid EnvState.{name}: expected token ids in [0, {self.vocab_size}) (the vocabulary), "
                f"got {int(bad)}."
            )

    def restore(self, row: int, state: EnvState, rng: np.random.Generator | None = None) -> None:
        """Makes ``row`` continue exactly from ``state`` (tokens, flags, problem and generator).

        ``rng`` is the generator :meth:`prepare` returned for ``state`` (then it is not validated again).
        """
        if rng is None:
            rng = self.prepare(state)
        problem, prompt = self.prompt_ids(int(state.problem_index))  # the validated, shared prompt
        response = np.asarray(state.response_ids, dtype=np.int64)
        self._write_row(row, int(state.problem_index), problem, prompt, response)
        self.terminated[row] = bool(state.terminated)
        self.truncated[row] = bool(state.truncated)
        self.rngs[row] = rng

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
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise TypeError(f"Expected a sequence of int env indices, got {type(indices).__name__}.")
    items = list(indices)
    wrong = [i for i in items if not _is_int(i)]
    if wrong:
        raise TypeError(f"Expected int env indices in [0, {n}), got {wrong[:5]!r}.")
    out = [int(i) for i in items]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise IndexError(f"Expected env indices in [0, {n}), got {bad}.")
    if len(set(out)) != len(out):
        raise ValueError(f"Expected distinct env indices, got {out}.")
    return out


def _short(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
