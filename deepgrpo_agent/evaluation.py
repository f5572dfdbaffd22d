"""Held-out evaluation: greedy accuracy and pass@k through the same env-driven rollout engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepgrpo_agent.engine.protocol import Engine, SamplingParams
from deepgrpo_agent.rollout import RolloutEnv, collect_rollouts

if TYPE_CHECKING:
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.env_pool import EnvPool

EVAL_SEED_STRIDE = 7919
"""Evaluation at step ``s`` samples pass@k with seed ``config.seed + EVAL_SEED_STRIDE * (s + 1)``
(a prime stride: evaluations of one run, and of runs with nearby seeds, draw different samples)."""


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if num_samples < k:
        raise ValueError(f"Expected at least k={k} samples, got {num_samples}.")
    if num_samples - num_correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))


def evaluate_policy(
    venv: RolloutEnv,
    engine: Engine,
    problem_indices: Sequence[int],
    *,
    max_new_tokens: int,
    pass_k: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    correct_out: list[bool] | None = None,
) -> dict[str, float]:
    """Greedy accuracy (one greedy answer per problem) and, if ``pass_k`` > 0, pass@k at ``temperature``.

    ``correct_out``, when given, is extended with each problem's greedy correctness (in
    ``problem_indices`` order): two evaluations on the same problems then give a paired difference.

    Returns:
        ``eval/accuracy``, ``eval/response_length``, ``eval/truncated_fraction`` and ``eval/pass@k``.
    """
    indices = np.asarray(problem_indices, dtype=np.int64)
    greedy = collect_rollouts(venv, engine, indices, 1, SamplingParams(0.0, 1.0, max_new_tokens))
    correct = np.array([c is True for c in greedy.correct])
    if correct_out is not None:
        correct_out.extend(bool(c) for c in correct)
    metrics = {
        "eval/accuracy": float(correct.mean()),
        "eval/response_length": float(np.mean([len(x) for x in greedy.new_ids])),
        "eval/truncated_fraction": float(np.mean(greedy.truncated)),
        "eval/problems": float(len(indices)),
    }
    if pass_k > 0:
        gen = torch.Generator().manual_seed(seed)
        sampled = collect_rollouts(venv, engine, indices, pass_k,
                                   SamplingParams(temperature, 1.0, max_new_tokens), generator=gen)
        hits = np.array([c is True for c in sampled.correct]).reshape(len(indices), pass_k)
        metrics[f"eval/pass@{pass_k}"] = float(np.mean([pass_at_k(pass_k, int(h.sum()), pass_k) for h in hits]))
        metrics["eval/sample_accuracy"] = float(hits.mean())
    return metrics


def eval_seed(seed: int, step: int) -> int:
    """The pass@k sampling seed of the evaluation at ``step`` of a run seeded ``seed``."""
    return seed + EVAL_SEED_STRIDE * (step + 1)


def evaluate_on_pool(
    envs: EnvPool, engine: Engine, config: GRPOConfig, *, step: int = 0, correct_out: list[bool] | None = None
) -> dict[str, float]:
    """:func:`evaluate_policy` on the pool's eval env and held-out problems, with the config's settings."""
    with torch.no_grad():
        return evaluate_policy(
            envs.eval_env(), engine, envs.eval_indices.tolist(), max_new_tokens=envs.eval_budget,
            pass_k=config.pass_k, temperature=config.temperature, seed=eval_seed(config.seed, step),
            correct_out=correct_out,
        )


def evaluate_config(config: GRPOConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, float]:
    """Evaluates ``config.model`` (or ``model``) on the config's held-out problems, without a trainer.

    What ``deepgrpo eval`` runs: the policy, an :class:`~deepgrpo_agent.env_pool.EnvPool` for the
    split and the eval env, and the config's engine; no optimizer, logger or training rollouts.
    """
    import envs_registry
    from deepgrpo_agent.engine import engine_max_len, make_engine
    from deepgrpo_agent.env_pool import EnvPool
    from deepgrpo_agent.policy import (
        RANDOM_TINY,
        load_dtype,
        load_policy,
        model_precision,
        random_tiny_model,
        resolve_device,
    )

    envs_registry.check_id(config.env_id)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if model is None and config.model != RANDOM_TINY:
        model, tokenizer = load_policy(config.model, device=device, dtype=load_dtype(config.dtype, device))
    envs = EnvPool(config, roots=1, tokenizer=tokenizer)
    try:
        if model is None:
            model = random_tiny_model(envs.vocab_size, config.seed)
        model = model.to(device).eval()
        precision = model_precision(model, config.dtype, device)
        engine = make_engine(config, model, vocab_size=envs.vocab_size, dtype=precision.compute_dtype,
                             max_model_len=engine_max_len(config, envs.max_prompt_tokens, model))
        try:
            return evaluate_on_pool(envs, engine, config)
        finally:
            close = getattr(engine, "close", None)
            if callable(close):
                close()
    finally:
        envs.close()
