"""The policy update: clipped surrogate (+ k3 KL) per stream, micro-batched with exact accumulation.

:func:`policy_update` is a function of explicit arguments (model, optimizer, scheduler, samples,
:class:`UpdateSettings`, stream weights, reference model); the trainer's ``update`` stage calls it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from deepgrpo_agent.losses import clipped_policy_loss, get_aggregation, k3_kl
from deepgrpo_agent.precision import Precision
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.scoring import (
    can_share_prefix,
    micro_batches,
    pack,
    shared_context_groups,
    shared_prefix_logprobs,
    token_logprobs,
)

if TYPE_CHECKING:
    from deepgrpo_agent.config import GRPOConfig


@dataclass(frozen=True)
class UpdateSettings:
    """The config fields the update reads (see :class:`~deepgrpo_agent.config.GRPOConfig`)."""

    ppo_epochs: int = 1
    micro_batch_size: int = 8
    temperature: float = 1.0
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2
    dual_clip: float | None = None
    kl_coef: float = 0.0
    loss_aggregation: str = "token-mean"
    max_new_tokens: int = 256
    max_grad_norm: float = 1.0
    skip_zero_advantage_rows: bool = True
    """Skip forward/backward of rows whose advantage is exactly 0 (exact; off for comparisons)."""
    share_prefix: bool = True
    """Compute each context shared by rows of a micro-batch once (:func:`~deepgrpo_agent.scoring.shared_prefix_logprobs`)."""
    fused_logprobs: bool = True
    """Chunked fp32 log-softmax on the real target positions only (:func:`~deepgrpo_agent.scoring.chosen_logprobs`);
    False = the reference (B, T, V) path."""

    @staticmethod
    def from_config(config: GRPOConfig) -> UpdateSettings:
        """The update settings of a run's config."""
        return UpdateSettings(
            ppo_epochs=config.ppo_epochs, micro_batch_size=config.micro_batch_size,
            temperature=config.temperature, clip_eps_low=config.clip_eps_low, clip_eps_high=config.clip_eps_high,
            dual_clip=config.dual_clip, kl_coef=config.kl_coef, loss_aggregation=config.loss_aggregation,
            max_new_tokens=config.max_new_tokens, max_grad_norm=config.max_grad_norm,
            skip_zero_advantage_rows=config.skip_zero_advantage_rows, share_prefix=config.share_prefix,
        )


@dataclass(frozen=True)
class _Parts:
    """What the helpers of one update share."""

    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    settings: UpdateSettings
    weights: dict[int, float]
    device: torch.device
    vocab_size: int | None
    precision: Precision | None


def _scores(model: torch.nn.Module, samples: TrainSamples, idx: np.ndarray, device: torch.device,
            temperature: float, pad_id: int, vocab_size: int | None,
            precision: Precision | None = None, settings: UpdateSettings | None = None,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (fp32) of rows ``idx`` and their mask.

    The old-policy, reference and ratio log-probs all come from here, under the same ``precision``
    (autocast for bf16) and the same path (shared prefix or packed rows, decided by the rows alone): the
    on-policy ratio is exactly 1 (docs/precision.md).
    """
    settings = settings if settings is not None else UpdateSettings()
    contexts = [samples.contexts[i] for i in idx]
    targets = [samples.targets[i] for i in idx]
    temps = _row_temperatures(samples, idx, temperature, device)
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        if settings.share_prefix and can_share_prefix(model, contexts):
            return shared_prefix_logprobs(model, contexts, targets, device, temps, vocab_size=vocab_size,
                                          pad_id=pad_id)
        batch = pack(contexts, targets, device, pad_id)
        return token_logprobs(model, batch, temps, vocab_size=vocab_size, fused=settings.fused_logprobs), batch.mask


def _row_temperatures(
    samples: TrainSamples, idx: np.ndarray, default: float, device: torch.device
) -> float | torch.Tensor:
    """``default`` for every row, or the rows' own sampling temperatures (nan = ``default``)."""
    if samples.temperatures is None:
        return default
    temps = np.nan_to_num(np.asarray(samples.temperatures, dtype=np.float64)[idx], nan=default)
    return torch.as_tensor(temps, dtype=torch.float32, device=device)  # (b,)


def _advantages(samples: TrainSamples, idx: np.ndarray, width: int, device: torch.device) -> torch.Tensor:
    """The rows' advantages: (b,) broadcast to their tokens, or (b, T) when rows carry per-token ones."""
    if samples.token_advantages is None:
        return torch.as_tensor(samples.advantages[idx], dtype=torch.float32, device=device)  # (b,)
    out = np.zeros((len(idx), width), dtype=np.float32)  # (b, T); padding positions are masked anyway
    for r, i in enumerate(idx):
        a = samples.row_token_advantages(int(i))
        out[r, : a.shape[0]] = a
    return torch.from_numpy(out).to(device)


def policy_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    samples: TrainSamples,
    settings: UpdateSettings,
    *,
    stream_weights: dict[int, float],
    ref_model: torch.nn.Module | None = None,
    device: torch.device | None = None,
    vocab_size: int | None = None,
    precision: Precision | None = None,
) -> dict[str, float]:
    """Runs ``settings.ppo_epochs`` optimizer steps on ``samples`` and returns loss metrics.

    Each stream ``s`` contributes ``stream_weights[s] * aggregate(loss over its rows)`` (docs/methods.md
    §1, §2). Micro-batches divide by the *whole* stream's denominator (aggregation ``denominator``), so
    the accumulated gradient equals the full-batch gradient whatever ``micro_batch_size`` is.

    Args:
        model: The policy (in train mode).
        optimizer: Its optimizer; one ``step()`` per epoch.
        scheduler: The learning-rate schedule; one ``step()`` per epoch.
        samples: The rows to train on.
        settings: Loss and batching settings.
        stream_weights: Loss weight of each stream id.
        ref_model: Frozen reference policy for the k3 KL term (needed when ``settings.kl_coef`` > 0).
        device: Where to run; default: the model's first parameter's device.
        vocab_size: The one vocabulary the engine sampled from; logits past it (a padded head) are
            dropped before every softmax (:func:`~deepgrpo_agent.scoring.restrict_vocab`). None = all.
        precision: Mixed precision of the forward passes (:mod:`~deepgrpo_agent.precision`): bf16 under
            autocast with fp32 master weights and fp32 log-probs, or None for the model's own dtype.
    """
    n = len(samples)
    if n == 0 or all(len(t) == 0 for t in samples.targets):
        return {"loss/total": 0.0, "train/skipped_update": 1.0}
    if settings.kl_coef > 0 and ref_model is None:
        raise ValueError(f"Expected a `ref_model` with kl_coef={settings.kl_coef} > 0, got None.")
    device = device if device is not None else next(model.parameters()).device
    parts = _Parts(model, ref_model if settings.kl_coef > 0 else None, settings, stream_weights, device, vocab_size,
                   precision)
    # Rows with advantage exactly 0 have a per-token loss of exactly 0 (for any ratio) and, without
    # KL, no gradient: skip their forward/backward but keep their tokens in the denominators, so the
    # update is the same as computing them (zero-variance groups are common early in training).
    skip = settings.skip_zero_advantage_rows and parts.ref_model is None
    needed = np.flatnonzero(samples.has_signal()) if skip else np.arange(n)
    groups = _micro_batches(samples, needed, settings)
    denominators = _stream_denominators(parts, samples)
    old, ref = _frozen_logprobs(parts, samples, groups)
    totals: dict[str, float] = {}
    for _ in range(settings.ppo_epochs):
        totals = _one_epoch(parts, optimizer, scheduler, samples, groups, denominators, old, ref)
    return totals


def _micro_batches(samples: TrainSamples, needed: np.ndarray, settings: UpdateSettings) -> list[np.ndarray]:
    """Micro-batches of the rows ``needed``: similar lengths together; with ``share_prefix`` and rows that
    share contexts, rows of one context together first (each micro-batch computes few distinct contexts),
    then by target length."""
    group, heads = shared_context_groups([samples.contexts[i] for i in needed])
    if settings.share_prefix and len(heads) < len(needed):
        keys = [(int(g), len(samples.targets[i])) for g, i in zip(group, needed)]
        order = sorted(range(len(needed)), key=lambda k: keys[k])
        return [needed[np.asarray(order[s : s + settings.micro_batch_size], dtype=np.int64)]
                for s in range(0, len(order), settings.micro_batch_size)]
    lengths = [len(samples.contexts[i]) + len(samples.targets[i]) for i in needed]
    return [needed[g] for g in micro_batches(len(needed), settings.micro_batch_size, lengths)]


def _computed_tokens(model: torch.nn.Module, samples: TrainSamples, idx: np.ndarray, settings: UpdateSettings) -> int:
    """Token positions the forward of rows ``idx`` computes (padding excluded): each distinct context
    once under ``share_prefix``, every row's context + target otherwise."""
    contexts = [samples.contexts[i] for i in idx]
    if settings.share_prefix and can_share_prefix(model, contexts):
        _, heads = shared_context_groups(contexts)
        return sum(len(contexts[h]) - 1 for h in heads) + sum(max(len(samples.targets[i]), 1) for i in idx)
    return sum(len(c) + len(samples.targets[i]) for c, i in zip(contexts, idx))


def _stream_denominators(parts: _Parts, samples: TrainSamples) -> dict[int, float]:
    """Each stream's aggregation denominator over the whole batch."""
    aggregation = get_aggregation(parts.settings.loss_aggregation)
    t_max = max(len(t) for t in samples.targets)
    full_mask = torch.zeros(len(samples), max(t_max, 1), dtype=torch.bool)
    for i, t in enumerate(samples.targets):
        full_mask[i, : len(t)] = True
    streams = torch.as_tensor(samples.streams)
    return {
        s: aggregation.denominator(full_mask[streams == s], max_tokens=parts.settings.max_new_tokens)
        for s in parts.weights
        if bool((streams == s).any())
    }


def _frozen_logprobs(
    parts: _Parts, samples: TrainSamples, groups: list[np.ndarray]
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Old-policy log-probs (only when ppo_epochs > 1) and reference log-probs (only with KL)."""
    cfg, device = parts.settings, parts.device
    old: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for k, idx in enumerate(groups):
            if cfg.ppo_epochs > 1:
                old[k] = _scores(parts.model, samples, idx, device, cfg.temperature, 0, parts.vocab_size,
                                 parts.precision, cfg)[0]
            if parts.ref_model is not None:
                ref[k] = _scores(parts.ref_model, samples, idx, device, cfg.temperature, 0, parts.vocab_size,
                                 parts.precision, cfg)[0]
    return old, ref


def _one_epoch(
    parts: _Parts,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    samples: TrainSamples,
    groups: list[np.ndarray],
    denominators: dict[int, float],
    old: dict[int, torch.Tensor],
    ref: dict[int, torch.Tensor],
) -> dict[str, float]:
    """Accumulates every micro-batch's gradient, then takes one clipped optimizer step."""
    cfg, model, device = parts.settings, parts.model, parts.device
    aggregation, weights = get_aggregation(cfg.loss_aggregation), parts.weights
    optimizer.zero_grad(set_to_none=True)
    sums = {"total": 0.0, "clip_fraction": 0.0, "kl": 0.0, "tokens": 0.0, "processed": 0.0, "computed": 0.0}
    stream_sums = {s: 0.0 for s in denominators}
    for k, idx in enumerate(groups):
        logp, mask = _scores(model, samples, idx, device, cfg.temperature, 0, parts.vocab_size,
                             parts.precision, cfg)  # (b, T) fp32
        adv = _advantages(samples, idx, logp.shape[1], device)  # (b,) or per token (b, T)
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
        loss.backward()  # type: ignore[no-untyped-call]
        sums["total"] += float(loss.detach())
        sums["clip_fraction"] += float((clipped & mask).sum())
        sums["tokens"] += float(mask.sum())
        sums["processed"] += float(sum(len(samples.contexts[i]) + len(samples.targets[i]) for i in idx))
        sums["computed"] += float(_computed_tokens(model, samples, idx, cfg))
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            # What a forward/backward of the skipped zero-advantage rows would have left: zeros
            # (AdamW still applies momentum and weight decay, as in the unskipped update).
            p.grad = torch.zeros_like(p)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    return {
        "loss/total": sums["total"],
        "loss/clip_fraction": sums["clip_fraction"] / max(sums["tokens"], 1.0),
        "loss/kl": sums["kl"] / max(sums["tokens"], 1.0),
        "train/grad_norm": float(grad_norm),
        "train/trained_tokens": sums["tokens"],
        "train/processed_tokens": sums["processed"],
        "train/computed_tokens": sums["computed"],
        "train/skipped_update": 0.0,
        **{f"loss/stream_{s}": v for s, v in stream_sums.items()},
    }
