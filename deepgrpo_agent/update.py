"""The policy update: clipped surrogate (+ k3 KL) per stream, micro-batched with exact accumulation."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from deepgrpo_agent.losses import clipped_policy_loss, get_aggregation, k3_kl
from deepgrpo_agent.scoring import micro_batches, pack, token_logprobs

if TYPE_CHECKING:
    from deepgrpo_agent.trainer import GRPOTrainer, TrainSamples


SKIP_ZERO_ADVANTAGE_ROWS = True
"""Skip forward/backward of rows whose advantage is exactly 0 (exact; a switch for tests)."""


def _scores(model: torch.nn.Module, samples: TrainSamples, idx: np.ndarray, device: torch.device,
            temperature: float, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = pack([samples.contexts[i] for i in idx], [samples.targets[i] for i in idx], device, pad_id)
    return token_logprobs(model, batch, temperature), batch.mask


def policy_update(trainer: GRPOTrainer, samples: TrainSamples) -> dict[str, float]:
    """Runs ``ppo_epochs`` optimizer steps on ``samples`` and returns loss metrics.

    Each stream ``s`` contributes ``weight_s * aggregate(loss over its rows)`` (methods.md §1, §2).
    Micro-batches divide by the *whole* stream's denominator (aggregation ``denominator``), so the
    accumulated gradient equals the full-batch gradient whatever ``micro_batch_size`` is.
    """
    cfg, model, device = trainer.config, trainer.model, trainer.device
    n = len(samples)
    if n == 0 or all(len(t) == 0 for t in samples.targets):
        return {"loss/total": 0.0, "train/skipped_update": 1.0}
    aggregation = get_aggregation(cfg.loss_aggregation)
    weights = trainer.stream_weights()
    # Rows with advantage exactly 0 have a per-token loss of exactly 0 (for any ratio) and, without
    # KL, no gradient: skip their forward/backward but keep their tokens in the denominators, so the
    # update is the same as computing them (zero-variance groups are common early in training).
    skip = SKIP_ZERO_ADVANTAGE_ROWS and trainer.ref_model is None
    needed = np.flatnonzero(samples.advantages != 0) if skip else np.arange(n)
    lengths_of = [len(c) + len(t) for c, t in zip(samples.contexts, samples.targets)]
    lengths = [lengths_of[i] for i in needed]
    groups = [needed[g] for g in micro_batches(len(needed), cfg.micro_batch_size, lengths)]
    pad_id = 0
    max_tokens = cfg.max_new_tokens
    # Denominators per stream over the whole batch.
    t_max = max(len(t) for t in samples.targets)
    full_mask = torch.zeros(n, max(t_max, 1), dtype=torch.bool)
    for i, t in enumerate(samples.targets):
        full_mask[i, : len(t)] = True
    streams = torch.as_tensor(samples.streams)
    denominators = {
        s: aggregation.denominator(full_mask[streams == s], max_tokens=max_tokens)
        for s in weights
        if bool((streams == s).any())
    }
    old: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    if cfg.ppo_epochs > 1 or trainer.ref_model is not None:
        with torch.no_grad():
            for k, idx in enumerate(groups):
                if cfg.ppo_epochs > 1:
                    old[k] = _scores(model, samples, idx, device, cfg.temperature, pad_id)[0]
                if trainer.ref_model is not None:
                    ref[k] = _scores(trainer.ref_model, samples, idx, device, cfg.temperature, pad_id)[0]
    totals: dict[str, float] = {}
    for _ in range(cfg.ppo_epochs):
        trainer.optimizer.zero_grad(set_to_none=True)
        sums = {"total": 0.0, "clip_fraction": 0.0, "kl": 0.0, "tokens": 0.0, "processed": 0.0}
        stream_sums = {s: 0.0 for s in denominators}
        for k, idx in enumerate(groups):
            logp, mask = _scores(model, samples, idx, device, cfg.temperature, pad_id)
            old_logp = old[k] if k in old else logp.detach()
            adv = torch.as_tensor(samples.advantages[idx], dtype=torch.float32, device=device)
            per_token, clipped = clipped_policy_loss(
                logp, old_logp, adv, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
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
                    part = aggregation.numerator(per_token[rows], mask[rows], max_tokens=max_tokens) / denom
                    stream_sums[s] += float(part.detach())
                    loss = loss + weights[s] * part
            loss.backward()
            sums["total"] += float(loss.detach())
            sums["clip_fraction"] += float((clipped & mask).sum())
            sums["tokens"] += float(mask.sum())
            sums["processed"] += float(sum(lengths_of[i] for i in idx))
        for p in model.parameters():
            if p.requires_grad and p.grad is None:
                # What a forward/backward of the skipped zero-advantage rows would have left: zeros
                # (AdamW still applies momentum and weight decay, as in the unskipped update).
                p.grad = torch.zeros_like(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        trainer.optimizer.step()
        trainer.scheduler.step()
        totals = {
            "loss/total": sums["total"],
            "loss/clip_fraction": sums["clip_fraction"] / max(sums["tokens"], 1.0),
            "loss/kl": sums["kl"] / max(sums["tokens"], 1.0),
            "train/grad_norm": float(grad_norm),
            "train/trained_tokens": sums["tokens"],
            "train/processed_tokens": sums["processed"],
            "train/skipped_update": 0.0,
            **{f"loss/stream_{s}": v for s, v in stream_sums.items()},
        }
    return totals
