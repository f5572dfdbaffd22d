"""EnvPool: the vector envs of one run (root, branch, evaluation), the train/eval split and the budget check.

Who builds the envs: by default the registry (``gym.make_vec(config.env_id, ...)`` with
``config.env_kwargs``); a user may pass an env factory ``make_env(num_envs) -> vector env`` instead
(for example one that wraps the env in a custom reward), and ``config.env_wrappers`` names wrappers
applied on top of every env either way. The same construction serves the root env, the branch env
(DEEP-GRPO's pivots, the trees' forks) and, unless the evaluation uses another env, the eval env.

One response budget: ``config.max_new_tokens``. The pool builds registry envs with
``max_response_tokens = max_new_tokens`` (``eval_max_new_tokens`` for the eval env) and refuses an
env whose budget is larger than the sampler's cap: the env would never truncate and grade such a
response, the rollout would cut it ungraded with reward 0. An env with a *smaller* budget is
accepted: it truncates and grades first, so the env's budget is the one truncation rule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

import envs_registry

EnvFactory = Callable[[int], Any]
"""``make_env(num_envs) -> vector env``: a deepgrpo vector env with ``autoreset_mode="Disabled"``."""

Wrapper = Callable[[Any], Any]
"""A vector-env wrapper class or function: ``wrapper(venv) -> venv``."""


def load_wrapper(spec: Any) -> Wrapper:
    """A wrapper from its config form: an import path ``"module:Name"``, ``{"class": path, "kwargs": {...}}``,
    or a callable (used as is).

    Raises:
        ValueError: If the spec is malformed or the path does not import.
    """
    if callable(spec):
        return spec  # type: ignore[no-any-return]
    kwargs: dict[str, Any] = {}
    path = spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"class", "kwargs"}
        if "class" not in spec or unknown:
            raise ValueError(
                f"Expected an env wrapper as {{'class': 'module:Name', 'kwargs': {{...}}}}, got {dict(spec)!r}."
            )
        path, kwargs = spec["class"], dict(spec.get("kwargs") or {})
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(
            f"Expected an env wrapper import path like 'deepgrpo_env.vector_wrappers:FormatReward', got {path!r}."
        )
    module, name = path.split(":", 1)
    try:
        target = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"Cannot import env wrapper {path!r}: {e}. Check the module path and the name."
        ) from e
    if not callable(target):
        raise ValueError(
            f"Expected env wrapper {path!r} to be a class or function, got {type(target).__name__}."
        )
    return (lambda venv: target(venv, **kwargs)) if kwargs else target


def registry_env(
    env_id: str,
    num_envs: int,
    *,
    budget: int,
    env_kwargs: Mapping[str, Any] | None = None,
    tokenizer: Any = None,
) -> Any:
    """A native vector env of a registered id for rollouts: ``autoreset_mode="Disabled"``, ``copy=False``.

    The env's response budget is ``budget`` (``env_kwargs`` may set ``max_response_tokens`` only to a
    value <= ``budget``). ``tokenizer`` is passed when the id's registry entry takes one.
    """
    kwargs = dict(env_kwargs or {})
    given = kwargs.get("max_response_tokens")
    if given is not None and int(given) > budget:
        raise ValueError(_budget_error(int(given), budget, env_id))
    kwargs.setdefault("max_response_tokens", budget)
    entry = envs_registry.entry(env_id)
    if tokenizer is not None and entry is not None and entry.takes_tokenizer:
        kwargs.setdefault("tokenizer", tokenizer)
    return gym.make_vec(env_id, num_envs=num_envs, autoreset_mode="Disabled", copy=False, **kwargs)


def _budget_error(env_budget: int, budget: int, what: str) -> str:
    return (
        f"Expected the response budget of {what} (max_response_tokens={env_budget}) to be at most the "
        f"sampler's `max_new_tokens`={budget}: longer responses would be cut ungraded with reward 0 instead "
        "of being truncated and graded by the env. Set one budget: `max_new_tokens` (the trainer builds "
        "the env with it), or make both equal."
    )


def check_env(venv: Any, budget: int, what: str) -> Any:
    """Checks that ``venv`` is a rollout env (the deepgrpo seams, autoreset disabled, budget <= ``budget``)."""
    missing = [
        n
        for n in ("snapshot", "reset_to", "prompt_ids", "codec", "limits", "num_problems", "problem_id")
        if not hasattr(venv, n)
    ]
    if missing:
        raise TypeError(
            f"Expected {what} to be a deepgrpo vector env (or a deepgrpo_env.vector_wrappers wrapper of one), "
            f"got {type(venv).__name__} without {missing}. Wrap it with ReasoningVectorWrapper subclasses only."
        )
    if getattr(venv, "autoreset_mode", None) != AutoresetMode.DISABLED:
        raise ValueError(
            f"Expected {what} with autoreset_mode='Disabled', got {getattr(venv, 'autoreset_mode', None)!r}; "
            "make it with gym.make_vec(id, num_envs=n, autoreset_mode='Disabled')."
        )
    env_budget = int(venv.limits.max_response_tokens)
    if env_budget > budget:
        raise ValueError(_budget_error(env_budget, budget, what))
    return venv


SPLIT_SEED = 20_251_201
"""Seed of the train/held-out split of a problem file. Fixed and independent of the run's ``seed``:
runs with different seeds train and evaluate on the same split, so their accuracies compare."""

MAX_SHUFFLED_SPLIT = 10_000_000
"""Sources with more problems than this (procedural ones) hold out their last indices instead of a
random subset (a permutation of them would not fit in memory)."""


def split_problems(num_problems: int, held_out: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The held-out and training problem indices of a source with ``num_problems`` problems.

    One seeded permutation of ``0 .. num_problems - 1``: its first ``held_out`` entries are held out
    (sorted), the rest are the training problems in permutation order (so a ``train_problems`` pool
    is a random subset too). The two are disjoint and together cover every index. A smaller
    ``held_out`` gives a subset of a larger one's held-out problems (the same permutation's prefix).

    Raises:
        ValueError: If ``held_out`` is not in ``[0, num_problems]``.
    """
    if not 0 <= held_out <= num_problems:
        raise ValueError(
            f"Expected 0 <= held-out problems <= {num_problems} (the source's size), got {held_out}; "
            "lower `eval_problems`."
        )
    order = np.random.default_rng(seed).permutation(num_problems)
    return np.sort(order[:held_out]), order[held_out:]


class EnvPool:
    """The envs of one run and its problem split.

    Args:
        config: The run's :class:`~deepgrpo_agent.config.GRPOConfig`.
        roots: Sub-envs of the root env (``prompts_per_step * roots_per_prompt``).
        tokenizer: The policy's tokenizer, for envs whose registry entry takes one.
        make_env: ``make_env(num_envs) -> vector env`` for the training envs; None = the registry.
        make_eval_env: ``make_eval_env(num_envs) -> vector env`` for evaluation; None = ``make_env``
            when given and no other eval id is configured, else the registry's eval env.

    Attributes:
        root: The root env (``roots`` sub-envs).
        train_indices: The training problem indices (sorted), or None for a procedural source
            (more than :data:`MAX_SHUFFLED_SPLIT` problems), where training draws i.i.d. from
            ``train_range``.
        train_range: ``(lo, hi)``: every training index lies in ``[lo, hi)`` (for a procedural
            source, every index of that range is a training problem).
        eval_indices: The held-out problem indices of the eval env. Evaluating on the training env
            (no separate eval id): a random subset of its problems drawn with the fixed
            :data:`SPLIT_SEED` (:func:`split_problems`), never trained on; for a procedural source
            its last ``eval_problems`` indices. With a separate eval env: its first ``eval_problems``.
        eval_env_id: The eval env's id (``config.env_id`` when evaluating on held-out problems of it).
    """

    def __init__(
        self,
        config: Any,
        *,
        roots: int,
        tokenizer: Any = None,
        make_env: EnvFactory | None = None,
        make_eval_env: EnvFactory | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.wrappers = [load_wrapper(w) for w in config.env_wrappers]
        self._make_env = make_env
        self._make_eval_env = make_eval_env
        self.root = self._train_env(roots)
        self._branch: Any = None
        self._eval: Any = None
        self._split()

    # -- construction -------------------------------------------------------------------------------
    def _wrap(self, venv: Any) -> Any:
        for wrapper in self.wrappers:
            venv = wrapper(venv)
        return venv

    def _train_env(self, num_envs: int) -> Any:
        cfg = self.config
        if self._make_env is not None:
            venv = self._make_env(num_envs)
        else:
            venv = registry_env(
                cfg.env_id,
                num_envs,
                budget=cfg.max_new_tokens,
                env_kwargs=cfg.env_kwargs,
                tokenizer=self.tokenizer,
            )
        venv = check_env(self._wrap(venv), cfg.max_new_tokens, f"the training env ({cfg.env_id})")
        if venv.num_envs < num_envs:
            raise ValueError(
                f"Expected make_env({num_envs}) to have {num_envs} sub-envs, got {venv.num_envs}."
            )
        return venv

    @property
    def eval_budget(self) -> int:
        """Token budget of evaluation responses."""
        return int(self.config.eval_max_new_tokens or self.config.max_new_tokens)

    def _split(self) -> None:
        cfg = self.config
        n = int(self.root.num_problems)
        entry = envs_registry.entry(cfg.env_id)
        if self._make_eval_env is not None:
            eval_id: str | None = cfg.eval_env_id or "make_eval_env"
        elif self._make_env is not None:
            eval_id = cfg.eval_env_id
        else:
            eval_id = cfg.eval_env_id or (entry.eval_id if entry is not None else None)
        held_out = cfg.eval_problems if eval_id in (None, cfg.env_id) else 0
        # eval_split="validation": the `eval_problems` problems before the test slice, also out of training.
        validation = held_out if cfg.eval_split == "validation" else 0
        held_out += validation
        if n - held_out < cfg.prompts_per_step:
            raise ValueError(
                f"{cfg.env_id} has {n} problems; holding out {held_out} for evaluation leaves fewer than "
                f"`prompts_per_step`={cfg.prompts_per_step}. Lower `eval_problems` or use another env."
            )
        pool = n - held_out if cfg.train_problems == 0 else min(cfg.train_problems, n - held_out)
        if pool < cfg.prompts_per_step:
            raise ValueError(
                f"Expected `train_problems` >= `prompts_per_step`={cfg.prompts_per_step}, got {cfg.train_problems}; "
                "raise it or use 0 to train on the whole split."
            )
        self.eval_env_id: str = eval_id or cfg.env_id
        self.train_indices: np.ndarray | None
        test_n = held_out - validation
        if n > MAX_SHUFFLED_SPLIT:
            # A procedural source (Arithmetic-v0 has 2**31 problems, i.i.d. by index): the held-out
            # problems are the last indices (validation just before them), training draws from the
            # rest, nothing is materialized.
            self.train_indices = None
            self.train_range = (0, pool)
            test = np.arange(n - test_n, n)
            val = np.arange(n - held_out, n - test_n)
        else:
            # The test problems are the same whatever eval_split says (the permutation's first test_n);
            # validation problems are the next ones of the same permutation.
            held, train = split_problems(n, held_out)
            test = split_problems(n, test_n)[0]
            val = np.setdiff1d(held, test)
            self.train_indices = np.sort(train[:pool])
            self.train_range = (int(self.train_indices[0]), int(self.train_indices[-1]) + 1)
        mine = val if cfg.eval_split == "validation" else test
        self.eval_indices = (
            mine if self.eval_env_id == cfg.env_id
            else np.arange(cfg.eval_problems) + (cfg.eval_problems if cfg.eval_split == "validation" else 0)
        )

    # -- the envs -----------------------------------------------------------------------------------
    def branch_env(self, needed: int) -> Any:
        """The branch env, with at least ``needed`` sub-envs: kept between steps, rebuilt only larger."""
        if self._branch is None or self._branch.num_envs < needed:
            if self._branch is not None:
                self._branch.close()
            self._branch = self._train_env(needed)
        return self._branch

    def eval_env(self) -> Any:
        """The eval env, sized for ``len(eval_indices) * max(pass_k, 1)`` rows (built on first use)."""
        if self._eval is None:
            cfg = self.config
            n = len(self.eval_indices) * max(cfg.pass_k, 1)
            what = f"the evaluation env ({self.eval_env_id})"
            if self._make_eval_env is not None:
                venv = self._make_eval_env(n)
            elif self._make_env is not None and self.eval_env_id == cfg.env_id:
                venv = self._make_env(n)
            else:
                venv = registry_env(
                    self.eval_env_id,
                    n,
                    budget=self.eval_budget,
                    env_kwargs=cfg.env_kwargs,
                    tokenizer=self.tokenizer,
                )
            self._eval = check_env(self._wrap(venv), self.eval_budget, what)
        return self._eval

    @property
    def vocab_size(self) -> int:
        """Size of the envs' action space (the policy's vocabulary must cover it)."""
        return int(self.root.single_action_space.n)

    @property
    def max_prompt_tokens(self) -> int:
        """Longest prompt of the training env (``limits.max_prompt_tokens``; engines size their context by it)."""
        return int(self.root.limits.max_prompt_tokens)

    def close(self) -> None:
        """Closes every env the pool built."""
        for venv in (self.root, self._branch, self._eval):
            if venv is not None:
                venv.close()


__all__ = ["MAX_SHUFFLED_SPLIT", "SPLIT_SEED", "EnvFactory", "EnvPool", "check_env", "load_wrapper", "registry_env", "split_problems"]
