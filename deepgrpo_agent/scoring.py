"""Scoring sequences with the policy: per-token log-probs of generated tokens, in micro-batches.

One vocabulary everywhere: the policy's action space is the env's ``single_action_space.n`` token
ids (the trainer's ``vocab_size``). A model's output head may be larger (embedding matrices are often
padded to a multiple of 64 or 128, e.g. Qwen2.5: 151,936 rows for 151,665 tokens); the extra logits
are not actions. :func:`restrict_vocab` is the one rule that every place computing a distribution
applies before its softmax: the engines' sampling, log-probs and entropies, the loss's log-probs
(:func:`token_logprobs`) and the reference model's, so that the loss scores exactly the distribution
the tokens were sampled from.
"""

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


def restrict_vocab(logits: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """The logits of the action space: ids ``< vocab_size`` of the last dimension (``(..., V) -> (..., vocab_size)``).

    Slicing is the same as masking ids ``>= vocab_size`` with -inf before the softmax (they get
    probability 0 and do not enter the normalizer), without computing over them. ``None`` (or the
    head's own size) keeps every logit.

    Raises:
        ValueError: If ``vocab_size`` is < 1 or larger than the head's ``logits.shape[-1]``.
    """
    if vocab_size is None or vocab_size == logits.shape[-1]:
        return logits
    if not 1 <= vocab_size <= logits.shape[-1]:
        raise ValueError(
            f"Expected 1 <= `vocab_size` <= the model's {logits.shape[-1]} output logits, got {vocab_size}; "
            "pass the env's `single_action_space.n`."
        )
    return logits[..., :vocab_size]


def token_logprobs(
    model: torch.nn.Module,
    batch: PackedBatch,
    temperature: float | torch.Tensor = 1.0,
    *,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """log pi(target_t | prefix) for every target token, (B, T); padding positions hold 0.

    The LM head runs only on the positions that predict target tokens (prompts are usually longer
    than responses here), and the log-softmax is taken as ``logit - logsumexp`` in fp32 so that no
    (B, T, V) log-prob tensor is materialized.

    ``temperature`` is one float for every row or a (B,) tensor of per-row temperatures (ERPO: each
    sample is scored at the temperature it was sampled at). ``vocab_size`` is the action space
    (:func:`restrict_vocab`): pass the one the engine samples with; None normalizes over the whole head.
    """
    body = model.get_decoder()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    index = batch.gather_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    picked = torch.gather(hidden, 1, index)  # (B, T, H)
    logits = restrict_vocab(head(picked), vocab_size).float()  # (B, T, V)
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
