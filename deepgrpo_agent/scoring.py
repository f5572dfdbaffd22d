"""Scoring sequences with the policy: per-token log-probs of generated tokens, in micro-batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PackedBatch:
    """Sequences right-padded into tensors for one forward pass.

    Attributes:
        input_ids: (B, L) context ids then target ids then padding.
        attention_mask: (B, L) 1 on real tokens.
        gather_pos: (B, T) position whose hidden state predicts target token t (0 on padding).
        targets: (B, T) target ids (0 on padding).
        mask: (B, T) bool, True on real target tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    gather_pos: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


def pack(
    contexts: Sequence[np.ndarray], targets: Sequence[np.ndarray], device: torch.device, pad_id: int = 0
) -> PackedBatch:
    """Packs ``contexts[i] + targets[i]`` (right padding; causal attention makes the padding inert)."""
    b = len(contexts)
    lengths = [len(c) + len(t) for c, t in zip(contexts, targets)]
    width, t_max = max(lengths), max(max(len(t) for t in targets), 1)
    ids = np.full((b, width), pad_id, dtype=np.int64)
    att = np.zeros((b, width), dtype=np.int64)
    pos = np.zeros((b, t_max), dtype=np.int64)
    tgt = np.zeros((b, t_max), dtype=np.int64)
    msk = np.zeros((b, t_max), dtype=bool)
    for i, (c, t) in enumerate(zip(contexts, targets)):
        n_c, n_t = len(c), len(t)
        if n_c == 0:
            raise ValueError("Expected a non-empty context (the prompt) for every scored sequence.")
        ids[i, :n_c] = c
        ids[i, n_c : n_c + n_t] = t
        att[i, : n_c + n_t] = 1
        pos[i, :n_t] = np.arange(n_c - 1, n_c + n_t - 1)
        tgt[i, :n_t] = t
        msk[i, :n_t] = True

    def as_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    return PackedBatch(as_t(ids), as_t(att), as_t(pos), as_t(tgt), as_t(msk))


def token_logprobs(
    model: torch.nn.Module, batch: PackedBatch, temperature: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """log pi(target_t | prefix) for every target token, (B, T); padding positions hold 0.

    The LM head runs only on the positions that predict target tokens (prompts are usually longer
    than responses here), and the log-softmax is taken as ``logit - logsumexp`` in fp32 so that no
    (B, T, V) log-prob tensor is materialized.

    ``temperature`` is one float for every row or a (B,) tensor of per-row temperatures (ERPO: each
    sample is scored at the temperature it was sampled at).
    """
    body = model.get_decoder()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    index = batch.gather_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    picked = torch.gather(hidden, 1, index)  # (B, T, H)
    logits = head(picked).float()
    if isinstance(temperature, torch.Tensor):
        logits = logits / temperature.to(logits.device, torch.float32)[:, None, None]  # (B, T, V) / (B, 1, 1)
    elif temperature != 1.0:
        logits = logits / temperature
    chosen = torch.gather(logits, -1, batch.targets.unsqueeze(-1)).squeeze(-1)
    logp = chosen - torch.logsumexp(logits, dim=-1)
    return logp * batch.mask


def micro_batches(n: int, size: int, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Index groups of at most ``size`` samples; with ``lengths``, similar lengths go together."""
    order = np.argsort(np.asarray(lengths), kind="stable") if lengths is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]
