"""Reward wrappers for the native vector env, on Gymnasium's vector wrapper API.

Training, branching and evaluation all run on :class:`~deepgrpo_env.vector.ReasoningVectorEnv`, so
this is where a custom reward goes. The wrappers here are ``gymnasium.vector.VectorWrapper``
subclasses with the same names and arguments as the single-env ones in
:mod:`deepgrpo_env.wrappers` (Gymnasium does the same with ``gymnasium.wrappers.vector``)::

    venv = gym.make_vec("Arithmetic-v0", num_envs=16, autoreset_mode="Disabled")
    venv = LengthPenalty(FormatReward(VerifierReward(venv, my_verifier)), coef=1e-3)

Every wrapper derives from :class:`ReasoningVectorWrapper`, which forwards the batched
``snapshot`` / ``reset_to`` and the env's public seams (``codec``, ``limits``, ``num_problems``,
``problem_id``, ``prompt_ids``, ``ended``, ``autoreset_mode``, ``fingerprint``) to the env below,
so DEEP-GRPO's branching works through any stack of them. The reward wrappers keep no per-episode
state, so a restored sub-env is scored exactly as a fresh one.

Writing your own reward: subclass :class:`EpisodeRewardWrapper` and override
:meth:`~EpisodeRewardWrapper.episode_rewards`; it is called once per step with the sub-envs whose
episode ended in that step::

    class ShortAnswerBonus(EpisodeRewardWrapper):
        def episode_rewards(self, rewards, info, rows):
            for r in rows:
                rewards[r] += 0.1 if len(info["response"][r]) < 50 else 0.0
            return rewards

To replace the env's grading, use :class:`VerifierReward` with your verifier (a callable
``(response, reference) -> float | None``), or record your scores with
:meth:`EpisodeRewardWrapper.set_scores`: the trainers read ``info["score"]`` (nan = unscorable,
advantage 0), ``info["correct"]`` and ``info["grade_status"]``. Make the env with ``verifier=None``
to avoid grading twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from deepgrpo_env.codec import Codec
from deepgrpo_env.core import EpisodeLimits
from deepgrpo_env.grading import Grader, is_correct
from deepgrpo_env.state import EnvState
from deepgrpo_env.verifiers import Verifier

__all__ = [
    "EpisodeRewardWrapper",
    "FormatReward",
    "LengthPenalty",
    "ReasoningVectorWrapper",
    "VerifierReward",
]

_BOXED = re.compile(r"\\boxed\s*\{")


class ReasoningVectorWrapper(gym.vector.VectorWrapper[Any, Any, Any, Any, Any]):
    """Base of every wrapper around a deepgrpo vector env: forwards snapshots and the public seams.

    Gymnasium's ``VectorWrapper`` forwards only the vector API (``step``, ``reset``, spaces,
    ``num_envs``); this class also forwards what deepgrpo's agents use, so a wrapped env can be used
    wherever a :class:`~deepgrpo_env.vector.ReasoningVectorEnv` can.

    Args:
        env: A deepgrpo vector env, or another wrapper of one.

    Raises:
        TypeError: If ``env`` has no batched ``snapshot`` / ``reset_to``.
    """

    def __init__(self, env: gym.vector.VectorEnv[Any, Any, Any]) -> None:
        super().__init__(env)
        missing = [
            n for n in ("snapshot", "reset_to", "prompt_ids", "codec", "limits") if not hasattr(env, n)
        ]
        if missing:
            raise TypeError(
                f"Expected a deepgrpo vector env (ReasoningVectorEnv or a wrapper of one), got "
                f"{type(env).__name__} without {missing}; make it with gym.make_vec(<deepgrpo id>, ...)."
            )
        self._inner: Any = env

    # -- snapshots ---------------------------------------------------------------------------------
    def snapshot(self, indices: Sequence[int] | None = None) -> list[EnvState]:
        """The states of the sub-envs at ``indices`` (all when None), from the env below."""
        states: list[EnvState] = self._inner.snapshot(indices)
        return states

    def reset_to(
        self, states: Sequence[EnvState], indices: Sequence[int] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Restores ``states[k]`` into sub-env ``indices[k]`` of the env below."""
        out: tuple[dict[str, np.ndarray], dict[str, Any]] = self._inner.reset_to(states, indices)
        return out

    # -- public seams -------------------------------------------------------------------------------
    @property
    def codec(self) -> Codec:
        """The tokenizer of the env (encode / decode / stop tokens)."""
        codec: Codec = self._inner.codec
        return codec

    @property
    def limits(self) -> EpisodeLimits:
        """Prompt and response token budgets."""
        limits: EpisodeLimits = self._inner.limits
        return limits

    @property
    def num_problems(self) -> int:
        """How many problems the env's source holds."""
        return int(self._inner.num_problems)

    def problem_id(self, index: int) -> str:
        """The stable id of problem ``index``."""
        return str(self._inner.problem_id(index))

    def prompt_ids(self, index: int) -> np.ndarray:
        """Read-only prompt ids of sub-env ``index``."""
        ids: np.ndarray = self._inner.prompt_ids(index)
        return ids

    def response_ids(self, index: int) -> np.ndarray:
        """A copy of the response ids of sub-env ``index``."""
        ids: np.ndarray = self._inner.response_ids(index)
        return ids

    @property
    def ended(self) -> np.ndarray:
        """Bool mask of sub-envs whose episode has ended."""
        ended: np.ndarray = self._inner.ended
        return ended

    @property
    def autoreset_mode(self) -> gym.vector.AutoresetMode:
        """The autoreset mode of the env below."""
        mode: gym.vector.AutoresetMode = self._inner.autoreset_mode
        return mode

    @property
    def fingerprint(self) -> str:
        """Identity of the configuration; states restore only into equal fingerprints."""
        return str(self._inner.fingerprint)


class EpisodeRewardWrapper(ReasoningVectorWrapper):
    """Base for reward wrappers: rewrites the reward of the sub-envs whose episode ended in a step.

    Subclasses override :meth:`episode_rewards`. Rewards of other sub-envs (0 in a deepgrpo env: the
    reward comes at the episode's end) are never changed.
    """

    def step(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        ended = info.get("_response")
        if ended is None or not np.any(ended):
            return obs, rewards, terminated, truncated, info
        rows = np.flatnonzero(ended)
        info = dict(info)  # the wrapper may rewrite columns; the env below keeps its own
        base = np.asarray(rewards, dtype=np.float64)
        new = np.asarray(self.episode_rewards(base.copy(), info, rows), dtype=np.float64)
        if new.shape != base.shape:
            raise ValueError(
                f"Expected {type(self).__name__}.episode_rewards to return {base.shape[0]} rewards (one per "
                f"sub-env), got shape {new.shape}."
            )
        out = base.copy()
        out[rows] = new[rows]
        return obs, out, terminated, truncated, info

    def episode_rewards(
        self, rewards: npt.NDArray[np.float64], info: dict[str, Any], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        """The new rewards of the sub-envs in ``rows``, whose episodes ended in this step.

        Args:
            rewards: (num_envs,) a copy of the rewards from the env below; modify and return it.
            info: The step's info (a shallow copy): ``info[key][r]`` for ``key`` in ``response``,
                ``reference``, ``response_ids``, ``problem_id``, ``score`` (nan = unscorable),
                ``correct`` and ``grade_status``. Replace a column (not an element of it in place)
                to change what wrappers above and the trainers see.
            rows: Indices of the sub-envs whose episode ended.

        Returns:
            (num_envs,) rewards; only the entries at ``rows`` are used.
        """
        raise NotImplementedError(f"{type(self).__name__} must override episode_rewards().")

    @staticmethod
    def set_scores(
        info: dict[str, Any],
        rows: Sequence[int] | npt.NDArray[np.intp],
        scores: Sequence[float | None],
        statuses: Sequence[str] | None = None,
    ) -> None:
        """Replaces ``info["score"]``, ``info["correct"]`` and ``info["grade_status"]`` at ``rows``.

        For wrappers that replace the env's grading. The trainers count a row whose ``score`` is nan
        as unscorable (advantage 0) whatever its reward, so a wrapper that grades responses itself
        (on an env made with ``verifier=None``, whose scores are nan) must record its scores here.
        The previous scores move to ``info["inner_score"]``. ``statuses`` default to ``"ok"`` for a
        float and ``"unscorable"`` for None.
        """
        score = np.array(info["score"], dtype=np.float64, copy=True)
        correct = np.array(info["correct"], dtype=object, copy=True)
        status = np.array(info["grade_status"], dtype=object, copy=True)
        info["inner_score"] = np.array(info["score"], dtype=np.float64, copy=True)
        info["_inner_score"] = np.array(info["_score"], copy=True)
        for k, r in enumerate(rows):
            value = scores[k]
            score[r] = np.nan if value is None else float(value)
            correct[r] = is_correct(value)
            status[r] = statuses[k] if statuses is not None else ("unscorable" if value is None else "ok")
        info["score"], info["correct"], info["grade_status"] = score, correct, status


class VerifierReward(EpisodeRewardWrapper):
    """Scores each final response with ``verifier``; that score becomes the episode's reward.

    ``info["score"]``, ``info["correct"]`` and ``info["grade_status"]`` of the ended sub-envs are
    replaced by this verifier's (the previous scores move to ``info["inner_score"]``), so the
    trainers' rewards, accuracy and unscorable counts are this verifier's. Grading runs in worker
    processes with a hard ``timeout`` unless the verifier is marked ``inline_safe``. An unscorable
    response (None, or a timeout) gets reward 0 and score nan.

    Args:
        env: A deepgrpo vector env (make it with ``verifier=None`` to avoid grading twice).
        verifier: ``(response_text, reference) -> float | None``.
        timeout: Hard grading timeout in seconds.
        num_workers: Responses graded at once (worker processes).
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv[Any, Any, Any],
        verifier: Verifier,
        *,
        timeout: float = 5.0,
        num_workers: int = 1,
    ) -> None:
        super().__init__(env)
        if not callable(verifier):
            raise TypeError(
                f"Expected `verifier` callable (response, reference) -> float | None, got {type(verifier).__name__}."
            )
        self.verifier = verifier
        self.grader = Grader(verifier, timeout=timeout, num_workers=num_workers)

    def episode_rewards(
        self, rewards: npt.NDArray[np.float64], info: dict[str, Any], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        grades = self.grader.grade_many([(str(info["response"][r]), str(info["reference"][r])) for r in rows])
        self.set_scores(info, rows, [g.score for g in grades], [g.status for g in grades])
        for r, grade in zip(rows, grades):
            rewards[r] = 0.0 if grade.score is None else grade.score
        return rewards

    def close(self, **kwargs: Any) -> None:
        self.grader.close()
        super().close(**kwargs)


class FormatReward(EpisodeRewardWrapper):
    """Adds ``bonus`` to the final reward when the response has the expected format.

    ``info["format_ok"]`` marks which ended responses had it.

    Args:
        env: The env to wrap.
        bonus: Added when the format is present (may be negative).
        missing_penalty: Added when the format is absent (e.g. ``-0.1``).
        pattern: Regex the response must contain; default ``\\boxed{``.
    """

    def __init__(
        self,
        env: gym.vector.VectorEnv[Any, Any, Any],
        *,
        bonus: float = 0.1,
        missing_penalty: float = 0.0,
        pattern: str | re.Pattern[str] = _BOXED,
    ) -> None:
        super().__init__(env)
        self.bonus = float(bonus)
        self.missing_penalty = float(missing_penalty)
        self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern

    def episode_rewards(
        self, rewards: npt.NDArray[np.float64], info: dict[str, Any], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        ok = np.zeros(rewards.shape[0], dtype=bool)
        for r in rows:
            ok[r] = self.pattern.search(str(info["response"][r])) is not None
            rewards[r] += self.bonus if ok[r] else self.missing_penalty
        info["format_ok"], info["_format_ok"] = ok, np.isin(np.arange(rewards.shape[0]), rows)
        return rewards


class LengthPenalty(EpisodeRewardWrapper):
    """Subtracts ``coef`` per response token beyond ``free_tokens`` from the final reward.

    ``info["length_penalty"]`` holds the amount subtracted.

    Args:
        env: The env to wrap.
        coef: Penalty per token over the free allowance.
        free_tokens: Tokens that cost nothing.
    """

    def __init__(
        self, env: gym.vector.VectorEnv[Any, Any, Any], *, coef: float = 1e-3, free_tokens: int = 0
    ) -> None:
        super().__init__(env)
        if coef < 0 or free_tokens < 0:
            raise ValueError(f"Expected `coef` >= 0 and `free_tokens` >= 0, got {coef} and {free_tokens}.")
        self.coef = float(coef)
        self.free_tokens = int(free_tokens)

    def episode_rewards(
        self, rewards: npt.NDArray[np.float64], info: dict[str, Any], rows: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        penalty = np.zeros(rewards.shape[0], dtype=np.float64)
        for r in rows:
            n = int(np.asarray(info["response_ids"][r]).shape[0])
            penalty[r] = self.coef * max(0, n - self.free_tokens)
            rewards[r] -= penalty[r]
        info["length_penalty"], info["_length_penalty"] = penalty, np.isin(np.arange(rewards.shape[0]), rows)
        return rewards
