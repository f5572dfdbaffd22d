"""The policy update: clipped surrogate (+ k3 KL) per stream, micro-batched with exact accumulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from deepgrpo_agent.losses import clipped_policy_loss, get_aggregation, k3_kl
from deepgrpo_agent.precision import Precision
from deepgrpo_agent.scoring import micro_batches, pack, token_logprobs

if TYPE_CHECKING:
    from deepgrpo_agent.trainer import GRPOTrainer, TrainSamples


SKIP_ZERO_ADVANTAGE_ROWS = True
"""Skip forward/backward of rows whose advantage is exactly 0 (exact; a switch for tests)."""


def _scores(model: torch.nn.Module, samples: TrainSamples, idx: np.ndarray, device: torch.device,
            temperature: float, pad_id: int, precision: Precision | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (fp32) of rows ``idx`` and their mask.

    The old-policy, reference and ratio log-probs all come from here, under the same ``precision``
    (autocast for bf16): the on-policy ratio is exactly 1 (docs/precision.md).
    """
    batch = pack([samples.contexts[i] for i in idx], [samples.targets[i] for i in idx], device, pad_id)
    temps = _row_temperatures(samples, idx, temperature, device)
    if precision is None:
        return token_logprobs(model, batch, temps), batch.mask
    with precision.autocast():
        return token_logprobs(model, batch, temps), batch.mask


def _row_temperatures(
    samples: TrainSamples, idx: np.ndarray, default: float, device: torch.device
) -> float | torch.Tensor:
    """``default`` for every row, or the rows' own sampling temperatures (nan = ``default``)."""
    if samples.temperatures is None:
        return default
    temps = np.nan_to_num(np.asarray(samples.temperatures, dtype=np.float64)[idx], nan=default)
    return torch.as_tensor(temps, dtype=torch.float32, device=device)  # (b,)


def policy_update(trainer: GRPOTrainer, samples: TrainSamples) -> dict[str, float]:
    """Runs ``ppo_epochs`` optimizer steps on ``samples`` and returns loss metrics.

    Each stream ``s`` contributes ``weight_s * aggregate(loss over its rows)`` (methods.md §1, §2).
    Micro-batches divide by the *whole* stream's denominator (aggregation ``denominator``), so the
    accumulated gradient equals the full-batch gradient whatever ``micro_batch_size`` is.
    """
    cfg = trainer.config
    n = len(samples)
    if n == 0 or all(len(t) == 0 for t in samples.targets):
        return {"loss/total": 0.0, "train/skipped_update": 1.0}
    # Rows with advantage exactly 0 have a per-token loss of exactly 0 (for any ratio) and, without
    # KL, no gradient: skip their forward/backward but keep their tokens in the denominators, so the
    # update is the same as computing them (zero-variance groups are common early in training).
    skip = SKIP_ZERO_ADVANTAGE_ROWS and trainer.ref_model is None
    needed = np.flatnonzero(samples.advantages != 0) if skip else np.arange(n)
    lengths = [len(samples.contexts[i]) + len(samples.targets[i]) for i in needed]
    groups = [needed[g] for g in micro_batches(len(needed), cfg.micro_batch_size, lengths)]
    denominators = _stream_denominators(trainer, samples)
    old, ref = _frozen_logprobs(trainer, samples, groups)
    totals: dict[str, float] = {}
    for _ in range(cfg.ppo_epochs):
        totals = _one_epoch(trainer, samples, groups, denominators, old, ref)
    return totals


def _stream_denominators(trainer: GRPOTrainer, samples: TrainSamples) -> dict[int, float]:
    """Each stream's aggregation denominator over the whole batch."""
    aggregation = get_aggregation(trainer.config.loss_aggregation)
    t_max = max(len(t) for t in samples.targets)
    full_mask = torch.zeros(len(samples), max(t_max, 1), dtype=torch.bool)
    for i, t in enumerate(samples.targets):
        full_mask[i, : len(t)] = True
    streams = torch.as_tensor(samples.streams)
    return {
        s: aggregation.denominator(full_mask[streams == s], max_tokens=trainer.config.max_new_tokens)
        for s in trainer.stream_weights()
        if bool((streams == s).any())
    }


def _frozen_logprobs(
    trainer: GRPOTrainer, samples: TrainSamples, groups: list[np.ndarray]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Old-policy log-probs (only when ppo_epochs > 1) and reference log-probs (only with KL)."""
    cfg, device = trainer.config, trainer.device
    old: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k, idx in enumerate(groups):
            if cfg.ppo_epochs > 1:
                old[k] = _scores(trainer.model, samples, idx, device, cfg.temperature, 0, trainer.precision)[0]
            if trainer.ref_model is not None:
                ref[k] = _scores(trainer.ref_model, samples, idx, device, cfg.temperature, 0, trainer.precision)[0]
    return old, ref


def _one_epoch(
    trainer: GRPOTrainer,
    samples: TrainSamples,
    groups: list[np.ndarray],
    denominators: dict[int, float],
    old: dict[int, torch.Tensor],
    ref: dict[int, torch.Tensor],
) -> dict[str, float]:
    """Accumulates every micro-batch's gradient, then takes one clipped optimizer step."""
    cfg, model, device = trainer.config, trainer.model, trainer.device
    aggregation, weights = get_aggregation(cfg.loss_aggregation), trainer.stream_weights()
    trainer.optimizer.zero_grad(set_to_none=True)
    sums = {"total": 0.0, "clip_fraction": 0.0, "kl": 0.0, "tokens": 0.0, "processed": 0.0}
    stream_sums = {s: 0.0 for s in denominators}
    for k, idx in enumerate(groups):
        logp, mask = _scores(model, samples, idx, device, cfg.temperature, 0, trainer.precision)  # (b, T) fp32
        adv = torch.as_tensor(samples.advantages[idx], dtype=torch.float32, device=device)  # (b,)
        per_token, clipped = clipped_policy_loss(
            logp, old.get(k, logp.detach()), adv, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
            dual_clip=cfg.dual_clip,
        )
        if k in ref:
            kl = k3_kl(logp, ref[k])
            per_token = per_token + cfg.kl_coef * kl
            sums["kl"] += float((kl.detach() * mask).sum())
        mb_streams = torch.as_tensor(samples.streams[idx], device=device)
        loss = torch.zeros((), device=device)
        for s, denom in denominators.items():
            rows = mb_streams == s
            if bool(rows.any()):
                part = aggregation.numerator(per_token[rows], mask[rows], max_tokens=cfg.max_new_tokens) / denom
                stream_sums[s] += float(part.detach())
                loss = loss + weights[s] * part
        loss.backward()
        sums["total"] += float(loss.detach())
        sums["clip_fraction"] += float((clipped & mask).sum())
        sums["tokens"] += float(mask.sum())
        sums["processed"] += float(sum(len(samples.contexts[i]) + len(samples.targets[i]) for i in idx))
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            # What a forward/backward of the skipped zero-advantage rows would have left: zeros
            # (AdamW still applies momentum and weight decay, as in the unskipped update).
            p.grad = torch.zeros_like(p)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    trainer.optimizer.step()
    trainer.scheduler.step()
    return {
        "loss/total": sums["total"],
        "loss/clip_fraction": sums["clip_fraction"] / max(sums["tokens"], 1.0),
        "loss/kl": sums["kl"] / max(sums["tokens"], 1.0),
        "train/grad_norm": float(grad_norm),
        "train/trained_tokens": sums["tokens"],
        "train/processed_tokens": sums["processed"],
        "train/skipped_update": 0.0,
        **{f"loss/stream_{s}": v for s, v in stream_sums.items()},
    }
