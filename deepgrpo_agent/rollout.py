"""Env-driven rollouts: an engine proposes tokens, the native vector env steps, ends and grades episodes.

The env is the single source of truth for when an episode ends and what it scores; the engine only
decodes. Three entry points:

- :func:`collect_rollouts`: GRPO roots, ``group_size`` rows per problem, each prompt prefilled once.
- :func:`branch_rollouts`: the branching primitive, ``branches`` continuations of each restored
  :class:`~deepgrpo_env.state.EnvState`, each prefix prefilled once.
- :func:`rollout_loop`: the decode loop both share with a token-step engine (sample, step the env,
  advance the session).

A request-level engine (``engine.request_level``, vLLM) instead generates whole completions at once,
with the env's stop ids and each row's remaining response budget as its stop conditions;
:func:`replay_completions` then steps them through the env token by token, so the env still ends and
grades every episode. Where the two disagree the env wins and the row is counted in
``RolloutBatch.engine_disagreements`` (0 when the stop conditions agree, as the tests check).

Sub-env layout: a call with ``n`` rows uses sub-envs ``0 .. n-1``; ``venv.num_envs`` must be at least
``n``. The env must use ``autoreset_mode="Disabled"`` so that ended sub-envs stay inert; sub-envs past
``n`` are *parked* (made inert) when they are live or were never started, by restoring into them the
start state of sub-env 0 marked as terminated. A parked sub-env ignores its actions and is never
graded. ``copy=False`` saves a token-buffer copy per step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from gymnasium.vector import AutoresetMode

from deepgrpo_agent.engine.protocol import Completion, DecodeSession, Engine, SamplingParams
from deepgrpo_env.state import EnvState

__all__ = [
    "CUT_STATUS",
    "LoopResult",
    "RolloutBatch",
    "RolloutEnv",
    "branch_rollouts",
    "collect_rollouts",
    "replay_completions",
    "rollout_loop",
]

@runtime_checkable
class RolloutEnv(Protocol):
    """What the rollout code needs of a vector env: a :class:`~deepgrpo_env.vector.ReasoningVectorEnv`
    or any :mod:`deepgrpo_env.vector_wrappers` wrapper of one."""

    @property
    def num_envs(self) -> int: ...

    @property
    def ended(self) -> np.ndarray: ...

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]: ...

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]: ...

    def snapshot(self, indices: Sequence[int] | None = None) -> list[EnvState]: ...

    def reset_to(
        self, states: Sequence[EnvState], indices: Sequence[int] | None = None
    ) -> tuple[Any, dict[str, Any]]: ...

    def prompt_ids(self, index: int) -> np.ndarray: ...


CUT_STATUS = "cut"
"""``grade_status`` of a row stopped by ``max_new_tokens`` before the env ended it (reward 0, not graded)."""


@dataclass
class LoopResult:
    """What :func:`rollout_loop` produced, one entry per session row.

    Attributes:
        new_ids: Generated token ids of each row (the env's actions), int64.
        logprobs: Log-prob of each generated token under the sampling distribution, float32.
        entropies: Entropy of the sampling distribution at each generated token, float32.
        rewards: The env's reward at the episode's end; nan when the verifier gave no score; 0.0 for
            rows cut by ``max_new_tokens``.
        correct: ``True``/``False``/``None`` as reported by the env (``False`` for cut rows).
        grade_status: The env's ``grade_status`` (``"ok"``, ``"unscorable"``, ``"timeout"``,
            ``"ungraded"``), or :data:`CUT_STATUS` for cut rows.
        terminated: The row emitted a stop token.
        truncated: The env's response budget ran out, or the row was cut by ``max_new_tokens``.
        steps: Env steps taken.
        disagreements: Rows the engine ended at another token than the env did (request-level
            engines only; the env's ending is kept).
    """

    new_ids: list[npt.NDArray[np.int64]]
    logprobs: list[npt.NDArray[np.float32]]
    entropies: list[npt.NDArray[np.float32]]
    rewards: npt.NDArray[np.float64]
    correct: npt.NDArray[np.object_]
    grade_status: list[str]
    terminated: npt.NDArray[np.bool_]
    truncated: npt.NDArray[np.bool_]
    steps: int
    disagreements: int = 0


@dataclass
class RolloutBatch:
    """Finished sequences, one row each, with what the trainer needs (no per-row dicts).

    Attributes:
        problem_index: Index of each row's problem in the env's problem source, (N,) int64.
        problem_id: Stable id of each row's problem.
        group: Which start sequence the row came from: the problem's position in
            ``problem_indices`` for roots, the state's position in ``states`` for branches, (N,) int64.
        prompt_ids: Prompt token ids of each row (read-only, shared between rows of a group).
        prefix_ids: Response tokens that existed before generation started: empty for roots, the
            pivot's prefix for branches (read-only).
        new_ids: Generated tokens (the only ones that carry loss), int64.
        logprobs: Sampling log-prob of each generated token, float32.
        entropies: Sampling-distribution entropy at each generated token, float32.
        rewards: Episode reward, (N,) float64; nan when the verifier gave no score; 0.0 when the row
            was cut by ``max_new_tokens`` before the env ended it.
        correct: (N,) object array of ``True``/``False``/``None``.
        grade_status: The env's grade status per row, or :data:`CUT_STATUS`.
        terminated: (N,) bool, the row emitted a stop token.
        truncated: (N,) bool, the response budget (env's or ``max_new_tokens``) ran out.
        generated_tokens: Tokens decoded in total (= sum of ``len(new_ids)``).
        prefilled_tokens: Prompt/prefix tokens prefilled in total (each start sequence once).
        states: Each row's env state at the end of generation; use :meth:`prefix_state` to get a
            state inside a trajectory (a pivot) for :func:`branch_rollouts`.
        prefill_s: Wall time of the prefill (``engine.start``); 0 with a request-level engine, whose
            prefill is inside ``decode_s``.
        decode_s: Wall time of the decode loop (env steps and grading included); with a
            request-level engine, ``engine.generate`` plus the replay through the env.
        temperatures: (N,) float64 sampling temperature of each row when the caller gave per-group
            temperatures; None = every row was sampled at ``params.temperature``.
        engine_disagreements: Rows a request-level engine ended at another token than the env
            (see :func:`replay_completions`); always 0 for token-step engines.
    """

    problem_index: npt.NDArray[np.int64]
    problem_id: list[str]
    group: npt.NDArray[np.int64]
    prompt_ids: list[npt.NDArray[np.int64]]
    prefix_ids: list[npt.NDArray[np.int64]]
    new_ids: list[npt.NDArray[np.int64]]
    logprobs: list[npt.NDArray[np.float32]]
    entropies: list[npt.NDArray[np.float32]]
    rewards: npt.NDArray[np.float64]
    correct: npt.NDArray[np.object_]
    grade_status: list[str]
    terminated: npt.NDArray[np.bool_]
    truncated: npt.NDArray[np.bool_]
    generated_tokens: int
    prefilled_tokens: int
    states: list[EnvState] = field(default_factory=list)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    temperatures: npt.NDArray[np.float64] | None = None
    engine_disagreements: int = 0

    def __len__(self) -> int:
        return int(self.problem_index.shape[0])

    def prefix_state(self, row: int, depth: int) -> EnvState:
        """The env state of ``row`` after ``depth`` response tokens (prefix + new), not ended.

        Valid because stepping never touches the env's generator and tokens are append-only: the state
        at an earlier depth differs from the final one only in its response and end flags.
        """
        state = self.states[row]
        if not (0 <= depth < state.depth or (depth == state.depth and not state.done)):
            raise ValueError(
                f"Expected 0 <= `depth` < {state.depth} (row {row}'s response length), got {depth}."
            )
        return state.prefix(depth)


def rollout_loop(
    venv: RolloutEnv,
    session: DecodeSession,
    rows: Sequence[int] | npt.NDArray[np.integer],
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> LoopResult:
    """Decodes until every row's episode has ended or ``params.max_new_tokens`` tokens were drawn.

    Session row ``j`` drives sub-env ``rows[j]``. Each step: ``session.sample`` -> ``venv.step`` ->
    ``session.advance(tokens, still_live)``. The env decides when a row ends and grades it.

    A row still live after ``max_new_tokens`` tokens counts as truncated with reward 0.0 and status
    :data:`CUT_STATUS`; its sub-env stays live (the next rollout call resets or parks it). Callers
    normally set ``max_new_tokens`` >= the env's remaining response budget so the env truncates first
    and grades the truncated answer.

    Args:
        venv: A :class:`~deepgrpo_env.vector.ReasoningVectorEnv` with ``autoreset_mode="Disabled"``;
            ``rows`` must be live and every other sub-env ended (inert).
        session: A decode session whose ``num_rows`` equals ``len(rows)``, positioned at the rows'
            current observations.
        rows: Sub-env index of each session row.
        params: Sampling settings (only ``max_new_tokens`` is read here).
        generator: Passed to ``session.sample``.
    """
    rows_a = np.asarray(rows, dtype=np.intp)
    n = int(rows_a.shape[0])
    _check_loop_inputs(venv, session.num_rows, rows_a)
    horizon = params.max_new_tokens
    tok_buf = np.zeros((horizon, n), dtype=np.int64)
    lp_buf = np.zeros((horizon, n), dtype=np.float32)
    ent_buf = np.zeros((horizon, n), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    live = np.ones(n, dtype=bool)
    actions = np.zeros(venv.num_envs, dtype=np.int64)  # ended sub-envs ignore theirs
    rewards = np.zeros(n, dtype=np.float64)
    correct = np.full(n, False, dtype=object)
    status = np.full(n, CUT_STATUS, dtype=object)
    terminated = np.zeros(n, dtype=bool)
    truncated = np.zeros(n, dtype=bool)
    steps = 0
    for t in range(horizon):
        tokens, logprobs, entropies = session.sample(generator)
        tok_buf[t], lp_buf[t], ent_buf[t] = tokens, logprobs, entropies
        lengths += live
        actions[rows_a] = tokens
        _, step_rewards, term, trunc, info = venv.step(actions)
        steps += 1
        _record_ended(live, rows_a, step_rewards, term, trunc, info, rewards, correct, status, terminated, truncated)
        if not live.any():
            break
        if t + 1 < horizon:
            session.advance(tokens, live.copy())
    truncated |= live  # cut by max_new_tokens: reward 0.0, correct False, status CUT_STATUS
    return LoopResult(
        new_ids=[tok_buf[: lengths[j], j].copy() for j in range(n)],
        logprobs=[lp_buf[: lengths[j], j].copy() for j in range(n)],
        entropies=[ent_buf[: lengths[j], j].copy() for j in range(n)],
        rewards=rewards,
        correct=correct,
        grade_status=[str(s) for s in status],
        terminated=terminated,
        truncated=truncated,
        steps=steps,
    )


def replay_completions(
    venv: Any,
    completions: Sequence[Completion],
    rows: Sequence[int] | npt.NDArray[np.integer],
    budgets: Sequence[int] | npt.NDArray[np.integer],
) -> LoopResult:
    """Steps whole completions through the env token by token; the env ends and grades each row.

    Completion ``j`` drives sub-env ``rows[j]``. A row ends where the env ends it (its stop token
    or its response budget); tokens the completion has past that point are dropped. A completion
    that runs out while its env row is still live was cut by its token budget ``budgets[j]``
    (``params.max_new_tokens`` below the env's remaining budget): the row counts as truncated with
    reward 0.0 and status :data:`CUT_STATUS`, as in :func:`rollout_loop`, and its sub-env is left
    live. Rows that ended at another token than the engine said (the env ended them before the
    completion's last token, or the completion stopped or ran out of budget where the env saw
    neither) are counted in ``disagreements``.

    Args:
        venv: The vector env, as for :func:`rollout_loop` (``rows`` live, every other sub-env inert).
        completions: One completion per row.
        rows: Sub-env index of each completion.
        budgets: The token budget each completion was generated with.
    """
    rows_a = np.asarray(rows, dtype=np.intp)
    n = int(rows_a.shape[0])
    if len(completions) != n or len(budgets) != n:
        raise ValueError(
            f"Expected one completion and one budget per row ({n}), got {len(completions)} and {len(budgets)}."
        )
    _check_loop_inputs(venv, n, rows_a)
    lens = np.array([c.token_ids.shape[0] for c in completions], dtype=np.int64)
    horizon = int(lens.max()) if n else 0
    tok = np.zeros((max(horizon, 1), n), dtype=np.int64)
    for j, c in enumerate(completions):
        tok[: lens[j], j] = c.token_ids
    taken = np.zeros(n, dtype=np.int64)
    live = np.ones(n, dtype=bool)
    actions = np.zeros(venv.num_envs, dtype=np.int64)  # ended sub-envs ignore theirs
    rewards = np.zeros(n, dtype=np.float64)
    correct = np.full(n, False, dtype=object)
    status = np.full(n, CUT_STATUS, dtype=object)
    terminated = np.zeros(n, dtype=bool)
    truncated = np.zeros(n, dtype=bool)
    held: dict[int, EnvState] = {}  # live states of rows cut mid-replay, parked until the end
    steps = 0
    for t in range(horizon):
        out = live & (lens <= t)
        if out.any():
            # Cut rows must not be stepped with the others' tokens: park them, restore them after.
            which = rows_a[out].tolist()
            for r, state in zip(which, venv.snapshot(which)):
                held[r] = state
            venv.reset_to([dataclasses.replace(held[r], terminated=True, truncated=False) for r in which], which)
            live &= ~out
        actions[rows_a] = tok[t]
        _, step_rewards, term, trunc, info = venv.step(actions)
        steps += 1
        taken += live
        _record_ended(live, rows_a, step_rewards, term, trunc, info, rewards, correct, status, terminated, truncated)
        if not live.any():
            break
    if held:
        venv.reset_to(list(held.values()), list(held))
    cut = ~(terminated | truncated)
    truncated |= cut  # cut by the token budget: reward 0.0, correct False, status CUT_STATUS
    finish_stop = np.array([c.finish == "stop" for c in completions], dtype=bool)
    agreed = np.where(
        cut,
        ~finish_stop & (lens == np.asarray(budgets, dtype=np.int64)),  # cut only by the engine's own budget
        (taken == lens) & (terminated == finish_stop),  # the env ended the row at the completion's last token
    )
    return LoopResult(
        new_ids=[c.token_ids[: taken[j]].astype(np.int64, copy=True) for j, c in enumerate(completions)],
        logprobs=[c.logprobs[: taken[j]].astype(np.float32, copy=True) for j, c in enumerate(completions)],
        entropies=[
            np.full(taken[j], np.nan, dtype=np.float32) if c.entropies is None
            else c.entropies[: taken[j]].astype(np.float32, copy=True)
            for j, c in enumerate(completions)
        ],
        rewards=rewards,
        correct=correct,
        grade_status=[str(x) for x in status],
        terminated=terminated,
        truncated=truncated,
        steps=steps,
        disagreements=int((~agreed).sum()),
    )


def collect_rollouts(
    venv: RolloutEnv,
    engine: Engine,
    problem_indices: Sequence[int] | npt.NDArray[np.integer],
    group_size: int,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
) -> RolloutBatch:
    """GRPO roots: ``group_size`` responses to each problem, each prompt prefilled once.

    Sub-envs ``0 .. len(problem_indices) * group_size - 1`` are reset; row ``i * group_size + k``
    is response ``k`` to ``problem_indices[i]`` (group ``i``). With ``temperatures`` (one per
    problem), group ``i`` is sampled at ``temperatures[i]`` instead of ``params.temperature``.

    Raises:
        ValueError: If ``group_size`` < 1, no problems are given, ``venv.num_envs`` is too small, or
            ``temperatures`` is not one value > 0 per problem.
    """
    indices = [int(i) for i in problem_indices]
    if not isinstance(group_size, (int, np.integer)) or group_size < 1:
        raise ValueError(f"Expected `group_size` to be an int >= 1, got {group_size!r}.")
    if not indices:
        raise ValueError("Expected at least one problem index, got none.")
    n = len(indices) * int(group_size)
    _check_env(venv, n, f"len(problem_indices) * group_size = {len(indices)} * {group_size}")
    mask = np.zeros(venv.num_envs, dtype=bool)
    mask[:n] = True
    chosen: list[int | None] = [None] * venv.num_envs
    chosen[:n] = np.repeat(indices, group_size).tolist()
    venv.reset(options={"reset_mask": mask, "problem_indices": chosen})
    rows = np.arange(n)
    _park_others(venv, n)
    prompts = [venv.prompt_ids(i * group_size) for i in range(len(indices))]
    row_temps = _group_temperatures(temperatures, len(indices), int(group_size), "problem")
    result, prefilled, prefill_s, decode_s = _generate(
        venv, engine, prompts, [0] * len(prompts), rows, params, int(group_size), row_temps, generator
    )
    empty = np.zeros(0, dtype=np.int64)
    empty.setflags(write=False)
    batch = _assemble(
        venv,
        rows,
        result,
        np.repeat(np.arange(len(indices)), group_size),
        [prompts[i // group_size] for i in range(n)],
        [empty] * n,
        prefilled,
    )
    batch.prefill_s, batch.decode_s = prefill_s, decode_s
    batch.engine_disagreements = result.disagreements
    batch.temperatures = row_temps
    return batch


def branch_rollouts(
    venv: RolloutEnv,
    engine: Engine,
    states: Sequence[EnvState],
    branches: int,
    params: SamplingParams,
    *,
    generator: torch.Generator | None = None,
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None = None,
) -> RolloutBatch:
    """``branches`` continuations of each state, each prompt + prefix prefilled once.

    Sub-envs ``0 .. len(states) * branches - 1`` are restored; row ``i * branches + k`` is branch
    ``k`` from ``states[i]`` (group ``i``). ``prefix_ids`` holds the state's response tokens and
    ``new_ids`` only what was generated after it. The env grades prefix + new tokens. With
    ``temperatures`` (one per state), group ``i`` is sampled at ``temperatures[i]``.

    Raises:
        ValueError: If ``branches`` < 1, no states are given, a state has already ended,
            ``venv.num_envs`` is too small, or ``temperatures`` is not one value > 0 per state.
    """
    states = list(states)
    if not isinstance(branches, (int, np.integer)) or branches < 1:
        raise ValueError(f"Expected `branches` to be an int >= 1, got {branches!r}.")
    if not states:
        raise ValueError("Expected at least one state to branch from, got none.")
    done = [k for k, s in enumerate(states) if s.done]
    if done:
        raise ValueError(
            f"Cannot branch from ended states (positions {done}); pick pivots before the episode's end, "
            "e.g. with RolloutBatch.prefix_state(row, depth)."
        )
    n = len(states) * int(branches)
    _check_env(venv, n, f"len(states) * branches = {len(states)} * {branches}")
    venv.reset_to([s for s in states for _ in range(branches)], list(range(n)))
    rows = np.arange(n)
    _park_others(venv, n)
    starts = [np.concatenate([s.prompt_ids, s.response_ids]) for s in states]
    row_temps = _group_temperatures(temperatures, len(states), int(branches), "state")
    result, prefilled, prefill_s, decode_s = _generate(
        venv, engine, starts, [s.depth for s in states], rows, params, int(branches), row_temps, generator
    )
    batch = _assemble(
        venv,
        rows,
        result,
        np.repeat(np.arange(len(states)), branches),
        [states[i // branches].prompt_ids for i in range(n)],
        [states[i // branches].response_ids for i in range(n)],
        prefilled,
    )
    batch.prefill_s, batch.decode_s = prefill_s, decode_s
    batch.engine_disagreements = result.disagreements
    batch.temperatures = row_temps
    return batch


# -- helpers ------------------------------------------------------------------------------------------
def _check_env(venv: RolloutEnv, needed: int, what: str) -> None:
    mode = getattr(venv, "autoreset_mode", None)
    if mode != AutoresetMode.DISABLED:
        raise ValueError(
            f"Expected a vector env with autoreset_mode='Disabled' (ended sub-envs stay inert), got {mode!r}; "
            "make it with ReasoningVectorEnv(..., autoreset_mode='Disabled')."
        )
    if venv.num_envs < needed:
        raise ValueError(
            f"Expected `venv.num_envs` >= {what} = {needed}, got {venv.num_envs}; "
            f"make the env with num_envs={needed} (or more)."
        )



def _record_ended(
    live: npt.NDArray[np.bool_],
    rows: npt.NDArray[np.intp],
    step_rewards: npt.NDArray[Any],
    term: npt.NDArray[np.bool_],
    trunc: npt.NDArray[np.bool_],
    info: dict[str, Any],
    rewards: npt.NDArray[np.float64],
    correct: npt.NDArray[Any],
    status: npt.NDArray[Any],
    terminated: npt.NDArray[np.bool_],
    truncated: npt.NDArray[np.bool_],
) -> None:
    """Records the outcome of the live rows the env ended this step (in place) and clears them from ``live``.

    A row whose verifier gave no score (NaN) keeps reward NaN; the others take the env's step reward.
    """
    ended = live & (term[rows] | trunc[rows])
    if not ended.any():
        return
    which = np.flatnonzero(ended)
    env_rows = rows[which]
    score = np.asarray(info["score"], dtype=np.float64)[env_rows]
    rewards[which] = np.where(np.isnan(score), np.nan, step_rewards[env_rows])
    correct[which] = info["correct"][env_rows]
    status[which] = info["grade_status"][env_rows]
    terminated[which] = term[env_rows]
    truncated[which] = trunc[env_rows]
    live &= ~ended

def _check_loop_inputs(venv: RolloutEnv, num_rows: int, rows: npt.NDArray[np.intp]) -> None:
    if num_rows != rows.shape[0]:
        raise ValueError(
            f"Expected one sub-env index per session row ({num_rows}), got {rows.shape[0]}."
        )
    if rows.size and (rows.min() < 0 or rows.max() >= venv.num_envs or np.unique(rows).size != rows.size):
        raise ValueError(f"Expected distinct sub-env indices in [0, {venv.num_envs}), got {rows.tolist()}.")
    ended = venv.ended
    if ended[rows].any():
        raise ValueError(
            f"Expected live episodes in the driven sub-envs, but {rows[ended[rows]].tolist()} have ended; "
            "reset or reset_to them first."
        )
    others = np.ones(venv.num_envs, dtype=bool)
    others[rows] = False
    if not ended[others].all():
        raise ValueError(
            f"Sub-envs {np.flatnonzero(others & ~ended).tolist()} are live but not driven by the session; "
            "they would be stepped too. End or park them first (collect_rollouts/branch_rollouts park them)."
        )


def _park_others(venv: RolloutEnv, used: int) -> None:
    """Makes sub-envs ``used ..`` inert: restores sub-env 0's state, marked terminated, into live ones."""
    if used >= venv.num_envs:
        return
    # Never-started sub-envs report not-ended too, so this also starts them (step() needs all started).
    idle = (np.flatnonzero(~venv.ended[used:]) + used).tolist()
    if idle:
        parked = dataclasses.replace(venv.snapshot([0])[0], terminated=True, truncated=False)
        venv.reset_to([parked] * len(idle), idle)


def _group_temperatures(
    temperatures: Sequence[float] | npt.NDArray[np.floating] | None, groups: int, size: int, what: str
) -> npt.NDArray[np.float64] | None:
    """One temperature per group, checked and repeated to one per row (None passes through)."""
    if temperatures is None:
        return None
    temps = np.asarray(temperatures, dtype=np.float64)
    if temps.shape != (groups,) or not (np.isfinite(temps) & (temps > 0)).all():
        raise ValueError(
            f"Expected `temperatures` to hold one finite value > 0 per {what} ({groups}), got "
            f"{temps.tolist()}; pass None to sample every row at params.temperature."
        )
    return np.repeat(temps, size)


def _generate(
    venv: Any,
    engine: Engine,
    starts: Sequence[npt.NDArray[np.int64]],
    depths: Sequence[int],
    rows: npt.NDArray[np.intp],
    params: SamplingParams,
    repeat: int,
    row_temps: npt.NDArray[np.float64] | None,
    generator: torch.Generator | None,
) -> tuple[LoopResult, int, float, float]:
    """Runs the engine in its native mode on ``repeat`` copies of each start sequence.

    Returns:
        ``(result, prefilled tokens, prefill seconds, decode seconds)``.
    """
    t0 = time.perf_counter()
    if not getattr(engine, "request_level", False):
        session = _start(engine, starts, params, repeat, row_temps)
        t1 = time.perf_counter()
        result = rollout_loop(venv, session, rows, params, generator)
        return result, _prefilled(session, starts), t1 - t0, time.perf_counter() - t1
    # The env's own stop conditions: its stop ids and each row's remaining response budget.
    core = getattr(venv, "unwrapped", venv)
    remaining = core.limits.max_response_tokens - np.asarray(depths, dtype=np.int64)
    budgets = np.minimum(remaining, params.max_new_tokens)
    completions = engine.generate(
        starts, params, repeat=repeat, temperatures=row_temps, stop_token_ids=tuple(core.codec.stop_token_ids),
        max_tokens=budgets.tolist(), generator=generator,
    )
    result = replay_completions(venv, completions, rows, np.repeat(budgets, repeat))
    lengths = np.repeat([len(s) for s in starts], repeat)
    prefilled = int(sum(int(lengths[j]) - c.cached_tokens for j, c in enumerate(completions)))
    return result, prefilled, 0.0, time.perf_counter() - t0


def _start(
    engine: Engine,
    starts: Sequence[npt.NDArray[np.int64]],
    params: SamplingParams,
    repeat: int,
    row_temps: npt.NDArray[np.float64] | None,
) -> DecodeSession:
    # Engines that predate per-row temperatures never see the keyword unless it is used.
    if row_temps is None:
        return engine.start(starts, params, repeat=repeat)
    return engine.start(starts, params, repeat=repeat, temperatures=row_temps)


def _prefilled(session: DecodeSession, starts: Sequence[np.ndarray]) -> int:
    count = getattr(session, "prefilled_tokens", None)
    return int(count) if count is not None else int(sum(len(s) for s in starts))


def _assemble(
    venv: RolloutEnv,
    rows: npt.NDArray[np.intp],
    result: LoopResult,
    group: npt.NDArray[np.int64],
    prompt_ids: list[npt.NDArray[np.int64]],
    prefix_ids: list[npt.NDArray[np.int64]],
    prefilled: int,
) -> RolloutBatch:
    states = venv.snapshot(rows.tolist())
    return RolloutBatch(
        problem_index=np.array([s.problem_index for s in states], dtype=np.int64),
        problem_id=[s.problem.id for s in states],
        group=np.asarray(group, dtype=np.int64),
        prompt_ids=prompt_ids,
        prefix_ids=prefix_ids,
        new_ids=result.new_ids,
        logprobs=result.logprobs,
        entropies=result.entropies,
        rewards=result.rewards,
        correct=result.correct,
        grade_status=result.grade_status,
        terminated=result.terminated,
        truncated=result.truncated,
        generated_tokens=int(sum(x.shape[0] for x in result.new_ids)),
        prefilled_tokens=prefilled,
        states=states,
    )
