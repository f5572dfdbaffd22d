"""Held-out evaluation: greedy accuracy and pass@k through the same env-driven rollout engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepgrpo_agent.engine.protocol import Engine, SamplingParams
from deepgrpo_agent.rollout import collect_rollouts


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k estimator (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if num_samples < k:
        raise ValueError(f"Expected at least k={k} samples, got {num_samples}.")
    if num_samples - num_correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(num_samples - num_correct + 1, num_samples + 1)))


def evaluate_policy(
    venv: Any,
    engine: Engine,
    problem_indices: Sequence[int],
    *,
    max_new_tokens: int,
    pass_k: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Greedy accuracy (one greedy answer per problem) and, if ``pass_k`` > 0, pass@k at ``temperature``.

    Returns:
        ``eval/accuracy``, ``eval/response_length``, ``eval/truncated_fraction`` and ``eval/pass@k``.
    """
    indices = np.asarray(problem_indices, dtype=np.int64)
    greedy = collect_rollouts(venv, engine, indices, 1, SamplingParams(0.0, 1.0, max_new_tokens))
    correct = np.array([c is True for c in greedy.correct])
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
