"""ReasoningVectorEnv: the native batched env (numpy) on the same core as the single env."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from deepgrpo_env.core import rows_of
from deepgrpo_env.env import (
    ProblemsArg,
    VerifierArg,
    build_parts,
    grade_info,
    observation_space,
)
from deepgrpo_env.prompts import PromptTemplate
from deepgrpo_env.state import EnvState

_MODES = {m.value: m for m in AutoresetMode}


class ReasoningVectorEnv(gym.vector.VectorEnv[dict[str, np.ndarray], np.ndarray, np.ndarray]):
    """``num_envs`` token-level reasoning episodes stepped together in numpy.

    Same semantics per sub-env as :class:`~deepgrpo_env.env.ReasoningEnv` (same arguments, plus
    ``num_envs``, ``autoreset_mode``, ``copy`` and ``grade_workers``), with batched
    :meth:`snapshot` / :meth:`reset_to` by index.

    Autoreset modes (``autoreset_mode=``):
      - ``"NextStep"`` (Gymnasium's default): the step after a sub-env ends resets it; its action
        is ignored and it returns the new first observation with reward 0.
      - ``"SameStep"``: a sub-env that ends is reset in the same step; the final observation and info
        are in ``info["final_obs"]`` / ``info["final_info"]``.
      - ``"Disabled"``: a sub-env that ends stays ended and is *inert* until
        ``reset(options={"reset_mask": mask})`` or ``reset_to``: its actions are ignored and it reports
        reward 0 with its end flags. This is what batched LLM rollouts use: run until all have ended.

    ``copy=False`` returns the internal token buffer as ``obs["input_ids"]`` (no per-step copy of
    ``num_envs x W`` ids); it is then overwritten by later steps, so copy what you keep. Default True.

    Agents read the env through public seams only: :attr:`codec` (the tokenizer), :attr:`limits`
    (the token budgets), :attr:`num_problems`, :meth:`problem_id`, :meth:`prompt_ids`, :attr:`ended`
    and the batched :meth:`snapshot` / :meth:`reset_to`; every wrapper in
    :mod:`deepgrpo_env.vector_wrappers` forwards them.

    Episode-end information for sub-env ``i`` appears in ``info[key][i]`` with ``info["_" + key][i]``
    True, for keys ``response``, ``reference``, ``response_ids``, ``problem_id``, ``score`` (nan when
    None), ``correct`` (object: bool or None) and ``grade_status``.
    """

    metadata = {"render_modes": ["ansi"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        problems: ProblemsArg = "gsm8k:train",
        *,
        tokenizer: Any = None,
        verifier: VerifierArg = "auto",
        prompt: PromptTemplate | str = "boxed",
        max_prompt_tokens: int = 512,
        max_response_tokens: int = 512,
        grade_timeout: float = 5.0,
        grade_workers: int = 1,
        stop_token_ids: Sequence[int] | None = None,
        vocab_size: int | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        copy: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"Expected `num_envs` >= 1, got {num_envs!r}.")
        mode = autoreset_mode if isinstance(autoreset_mode, AutoresetMode) else _MODES.get(autoreset_mode)
        if mode is None:
            raise ValueError(
                f"Expected `autoreset_mode` in {sorted(_MODES)} or an AutoresetMode, got {autoreset_mode!r}."
            )
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.autoreset_mode = mode
        self.render_mode = render_mode
        self.num_envs = int(num_envs)
        self.copy = copy
        parts = build_parts(
            self.num_envs, problems, tokenizer=tokenizer, verifier=verifier, prompt=prompt,
            max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens,
            grade_timeout=grade_timeout, grade_workers=grade_workers, stop_token_ids=stop_token_ids,
            vocab_size=vocab_size,
        )
        self.core, self.verifier, self.grader = parts.core, parts.verifier, parts.grader
        self.codec, self.limits = self.core.codec, self.core.limits
        self.single_action_space = spaces.Discrete(self.codec.vocab_size)
        self.single_observation_space = observation_space(self.codec.vocab_size, self.limits)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self._all = np.arange(self.num_envs)
        self._autoreset = np.zeros(self.num_envs, dtype=bool)
        self._length = np.zeros((self.num_envs, 1), dtype=np.int64)
        self._prompt_length = np.zeros((self.num_envs, 1), dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        """Identity of the configuration; states restore only into equal fingerprints."""
        return self.core.fingerprint

    # -- observations and infos -----------------------------------------------------------------
    def _obs(self) -> dict[str, np.ndarray]:
        core = self.core
        np.add(core.prompt_len, core.resp_len, out=self._length[:, 0])
        self._prompt_length[:, 0] = core.prompt_len
        if self.copy:
            return {
                "input_ids": core.tokens.copy(),
                "length": self._length.copy(),
                "prompt_length": self._prompt_length.copy(),
            }
        return {"input_ids": core.tokens, "length": self._length, "prompt_length": self._prompt_length}

    def _start_info(self, rows: Sequence[int]) -> dict[str, Any]:
        core, n = self.core, self.num_envs
        mask = np.zeros(n, dtype=bool)
        mask[list(rows)] = True
        ids = np.empty(n, dtype=object)
        for r in rows:
            problem = core.problems[r]
            ids[r] = problem.id if problem is not None else None
        return {
            "problem_id": ids,
            "_problem_id": mask,
            "problem_index": core.problem_index.copy(),
            "_problem_index": mask.copy(),
            "prompt_length": core.prompt_len.copy(),
            "_prompt_length": mask.copy(),
        }

    def _final_info(self, rows: npt.NDArray[np.intp]) -> tuple[dict[str, Any], np.ndarray]:
        core, n = self.core, self.num_envs
        rewards = np.zeros(n, dtype=np.float64)
        if rows.size == 0:
            return {}, rewards
        ids = [core.response_ids(int(r)) for r in rows]
        texts = [self.codec.decode(x.tolist()) for x in ids]
        refs = []
        for r in rows:
            problem = core.problems[int(r)]
            assert problem is not None
            refs.append(problem.reference)
        grades = (
            self.grader.grade_many(list(zip(texts, refs)))
            if self.grader is not None
            else [None] * len(texts)
        )
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        info: dict[str, Any] = {}
        columns: dict[str, np.ndarray] = {
            "response": np.empty(n, dtype=object),
            "reference": np.empty(n, dtype=object),
            "response_ids": np.empty(n, dtype=object),
            "problem_id": np.empty(n, dtype=object),
            "score": np.full(n, np.nan),
            "correct": np.empty(n, dtype=object),
            "grade_status": np.empty(n, dtype=object),
        }
        for k, r in enumerate(rows):
            one = grade_info(grades[k], texts[k], refs[k])
            problem = core.problems[int(r)]
            one.update(response_ids=ids[k], problem_id=problem.id if problem else None)
            for key, col in columns.items():
                value = one[key]
                col[r] = np.nan if (key == "score" and value is None) else value
            rewards[r] = one["score"] or 0.0
        for key, col in columns.items():
            info[key] = col
            info["_" + key] = mask.copy()
        return info, rewards

    # -- Gymnasium vector API ---------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Resets all sub-envs (or those in ``options["reset_mask"]``).

        Options: ``reset_mask`` (bool array, which sub-envs to reset), ``problem_indices`` (one index
        or None per sub-env; None draws one with that sub-env's generator).
        """
        options = dict(options or {})
        unknown = set(options) - {"reset_mask", "problem_indices"}
        if unknown:
            raise ValueError(
                f"Unknown reset option(s) {sorted(unknown)}; expected 'reset_mask' or 'problem_indices'."
            )
        mask = np.ones(self.num_envs, dtype=bool)
        if "reset_mask" in options:
            mask = np.asarray(options["reset_mask"], dtype=bool)
            if mask.shape != (self.num_envs,):
                raise ValueError(f"Expected `reset_mask` of shape ({self.num_envs},), got {mask.shape}.")
        seeds = self._seeds(seed)
        indices = options.get("problem_indices")
        if indices is not None and len(indices) != self.num_envs:
            raise ValueError(
                f"Expected `problem_indices` with {self.num_envs} entries (None to draw), got {len(indices)}."
            )
        rows = np.flatnonzero(mask)
        for r in rows:
            if seeds[r] is not None:
                self.core.rngs[r], _ = seeding.np_random(seeds[r])
            self.core.begin(int(r), None if indices is None else indices[r])
        self._autoreset[rows] = False
        return self._obs(), self._start_info(rows.tolist())

    def _seeds(self, seed: int | list[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        if len(seed) != self.num_envs:
            raise ValueError(f"Expected {self.num_envs} seeds, got {len(seed)}.")
        return list(seed)

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        core, n = self.core, self.num_envs
        if not core.started.all():
            raise RuntimeError("Cannot call step() before reset(); call venv.reset() first.")
        acts = core.check_actions(actions, n)
        ended = core.terminated | core.truncated
        if not ended.any():
            rows = self._all
            core.push(rows, acts)
        else:
            rows = np.flatnonzero(~ended)
            core.push(rows, acts[rows])
        finished = rows[core.terminated[rows] | core.truncated[rows]]
        info, rewards = self._final_info(finished)
        terminated, truncated = core.terminated.copy(), core.truncated.copy()
        mode = self.autoreset_mode
        if mode == AutoresetMode.NEXT_STEP:
            restart = np.flatnonzero(self._autoreset)
            for r in restart:
                core.begin(int(r))
            terminated[restart] = truncated[restart] = False
            self._autoreset = terminated | truncated
            if restart.size:
                info.update(self._start_info(restart.tolist()))
        elif mode == AutoresetMode.SAME_STEP and finished.size:
            final_obs = self._obs()
            info["final_obs"] = np.array(
                [{k: v[i].copy() for k, v in final_obs.items()} for i in range(n)], dtype=object
            )
            info["_final_obs"] = np.isin(self._all, finished)
            info["final_info"] = {k: v for k, v in info.items() if not k.startswith(("final", "_final"))}
            info["_final_info"] = info["_final_obs"].copy()
            for r in finished:
                core.begin(int(r))
        # Disabled: ended sub-envs stay ended (inert) and keep reporting their flags.
        return self._obs(), rewards, terminated, truncated, info

    # -- snapshots --------------------------------------------------------------------------------
    def snapshot(self, indices: Sequence[int] | None = None) -> list[EnvState]:
        """States of the sub-envs at ``indices`` (all when None); no tokens are copied."""
        return [self.core.snapshot(r) for r in rows_of(indices, self.num_envs)]

    def reset_to(
        self, states: Sequence[EnvState], indices: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Restores ``states[k]`` into sub-env ``indices[k]`` (``indices`` defaults to 0..len-1).

        The same state may be restored into several sub-envs (that is how branches are made). Other
        sub-envs are untouched. Every state is validated before any sub-env is written, so a bad
        state raises and leaves all sub-envs unchanged. Returns the batched observation and the start
        info of the restored sub-envs.
        """
        states = list(states)
        rows = rows_of(indices if indices is not None else range(len(states)), self.num_envs)
        if len(rows) != len(states):
            raise ValueError(f"Expected one index per state, got {len(rows)} indices for {len(states)} states.")
        # Validate every state before writing any row: a bad state leaves all sub-envs as they were.
        rngs = []
        for k, state in enumerate(states):
            try:
                rngs.append(self.core.prepare(state))
            except (TypeError, ValueError) as e:
                raise type(e)(f"states[{k}] (for sub-env {rows[k]}): {e} No sub-env was changed.") from e
        for r, state, rng in zip(rows, states, rngs):
            self.core.restore(r, state, rng)
            self._autoreset[r] = state.done
        return self._obs(), self._start_info(rows)

    # -- public seams for agents ------------------------------------------------------------------
    @property
    def num_problems(self) -> int:
        """How many problems the env's source holds (problem indices are ``0 .. num_problems - 1``)."""
        return len(self.core.source)

    def problem_id(self, index: int) -> str:
        """The stable id of problem ``index`` of the source (what per-prompt histories are keyed by)."""
        return self.core.source.problem(int(index)).id

    # -- conveniences for rollout engines ---------------------------------------------------------
    @property
    def ended(self) -> np.ndarray:
        """Bool mask of sub-envs whose episode has ended (copy)."""
        return self.core.terminated | self.core.truncated

    def prompt_ids(self, index: int) -> np.ndarray:
        """Read-only prompt ids of sub-env ``index``."""
        prompt = self.core.prompts[rows_of([index], self.num_envs)[0]]
        if prompt is None:
            raise RuntimeError("Call reset() before reading prompts.")
        return prompt

    def response_ids(self, index: int) -> np.ndarray:
        """A copy of the response ids of sub-env ``index``."""
        return self.core.response_ids(rows_of([index], self.num_envs)[0])

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode != "ansi":
            return None
        return tuple(self.core.text(r) for r in range(self.num_envs))

    def close_extras(self, **kwargs: Any) -> None:
        if self.grader is not None:
            self.grader.close()
