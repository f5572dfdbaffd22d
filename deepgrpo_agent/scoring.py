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

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    fused: bool = True,
) -> torch.Tensor:
    """log pi(target_t | prefix) for every target token, (B, T); padding positions hold 0.

    The LM head runs only on the positions that predict target tokens (prompts are usually longer
    than responses here), and the log-softmax is taken as ``logit - logsumexp`` in fp32.

    ``temperature`` is one float for every row or a (B,) tensor of per-row temperatures (ERPO: each
    sample is scored at the temperature it was sampled at). ``vocab_size`` is the action space
    (:func:`restrict_vocab`): pass the one the engine samples with; None normalizes over the whole head.

    ``fused`` (the default, for a bias-free linear head) runs the head on the real target positions
    only and takes the fp32 log-softmax in row chunks (:func:`chosen_logprobs`); ``fused=False`` is the
    reference: the head on every (B, T) position, the (B, T, V) logits cast to fp32.
    """
    body = model.get_decoder()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    hidden = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    if fused and _fusable_head(head):
        rows, cols = batch.mask.nonzero(as_tuple=True)
        picked = hidden[rows, batch.gather_pos[rows, cols]]  # (N, H), real target positions only
        return _scatter_rows(
            chosen_logprobs(picked, head, batch.targets[rows, cols], _position_temperatures(temperature, rows, hidden),
                            vocab_size=vocab_size),
            batch.mask,
        )
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


def _position_temperatures(temperature: float | torch.Tensor, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) fp32 temperature of each selected position (``rows``: the row of each)."""
    if isinstance(temperature, torch.Tensor):
        return temperature.to(like.device, torch.float32)[rows]
    return torch.full(rows.shape, float(temperature), dtype=torch.float32, device=like.device)


def _scatter_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) values of the True positions of ``mask`` (row-major) laid out as (B, T), 0 elsewhere."""
    out = values.new_zeros(mask.shape)
    return out.masked_scatter(mask, values)


def micro_batches(n: int, size: int, lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Index groups of at most ``size`` samples; with ``lengths``, similar lengths go together."""
    order = np.argsort(np.asarray(lengths), kind="stable") if lengths is not None else np.arange(n)
    return [order[i : i + size] for i in range(0, n, size)]


def _compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer multiplies in here: autocast's, when it is on for the weight's device."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _ChosenLogprob(torch.autograd.Function):
    """log softmax(h W^T / temp)[target] per row, without a (N, V) fp32 tensor or its gradient.

    Forward: one head matmul into a (N, V) buffer of the compute dtype, then, ``chunk`` rows at a
    time, fp32 ``logsumexp`` and the chosen logit. Backward writes ``(onehot - softmax) * g / temp``
    chunk by chunk into the same buffer (cast to the compute dtype, as autocast's backward does) and
    takes the two gradient matmuls on the whole buffer. The values are those of
    ``token_logprobs(fused=False)``: same matmul, same fp32 log-softmax (tests/agent/test_fast_update.py).
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temps: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        logits = hidden @ weight.t()  # (N, V) in the compute dtype
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # (N,)
        lse = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            z = logits[s : s + chunk].float() / temps[s : s + chunk, None]  # (c, V) fp32
            lse[s : s + chunk] = torch.logsumexp(z, dim=-1)
            out[s : s + chunk] = z.gather(1, targets[s : s + chunk, None])[:, 0] - lse[s : s + chunk]
        ctx.save_for_backward(hidden, weight, targets, temps, lse, logits)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, targets, temps, lse, logits = ctx.saved_tensors
        chunk = ctx.chunk
        grad = grad.float()
        for s in range(0, hidden.shape[0], chunk):
            e = s + chunk
            z = logits[s:e].float() / temps[s:e, None]  # (c, V)
            g = torch.exp_(z.sub_(lse[s:e, None])).mul_(-grad[s:e, None])  # -softmax * g
            g.scatter_add_(1, targets[s:e, None], grad[s:e, None])  # + onehot * g
            logits[s:e] = g.div_(temps[s:e, None])  # d/dlogits = d/dz / temp, in the compute dtype
        grad_hidden = logits @ weight if ctx.needs_input_grad[0] else None  # (N, H)
        grad_weight = logits.t() @ hidden if ctx.needs_input_grad[1] else None  # (V, H)
        return grad_hidden, grad_weight, None, None, None


def chosen_logprobs(
    hidden: torch.Tensor,
    head: torch.nn.Module,
    targets: torch.Tensor,
    temperatures: torch.Tensor,
    *,
    vocab_size: int | None = None,
    chunk: int = 256,
) -> torch.Tensor:
    """log pi(targets[n] | hidden[n]) for N positions, (N,) fp32, through the LM head ``head``.

    The head multiplies in the compute dtype (bf16 under autocast); the log-softmax is fp32 over the
    action space (:func:`restrict_vocab`), ``chunk`` rows at a time, so neither the fp32 logits nor
    their gradient are ever materialized for all N rows.

    Args:
        hidden: (N, H) final hidden states of the positions that predict ``targets``.
        head: A bias-free ``torch.nn.Linear`` (the LM head; tied weights are fine).
        targets: (N,) int64 target ids.
        temperatures: (N,) fp32 temperature of each position.
        vocab_size: The action space; None = the whole head.
        chunk: Rows per fp32 log-softmax chunk.
    """
    weight = head.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"Expected the LM head to be a torch.nn.Linear with a weight tensor, got {type(head).__name__}.")
    dtype = _compute_dtype(weight)
    w = restrict_vocab(weight.t(), vocab_size).t()  # (V', H): the action space's rows
    with torch.autocast(weight.device.type, enabled=False):
        out = _ChosenLogprob.apply(hidden.to(dtype), w.to(dtype), targets, temperatures.float(), int(chunk))  # type: ignore[no-untyped-call]
    return out  # type: ignore[no-any-return]


def _fusable_head(head: Any) -> bool:
    return isinstance(head, torch.nn.Linear) and head.bias is None


def cache_keyword(module: Any) -> str:
    """The name under which ``module.forward`` takes a KV cache: ``cache`` (transformers >= 5.20;
    ``past_key_values`` there is deprecated) or ``past_key_values`` (older releases)."""
    try:
        names = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in names else "past_key_values"


def shared_context_groups(contexts: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
    """(B,) group id of each row (rows with identical contexts share one) and the first row of each group."""
    first: dict[bytes, int] = {}
    ids = np.empty(len(contexts), dtype=np.int64)
    heads: list[int] = []
    for i, c in enumerate(contexts):
        key = np.asarray(c, dtype=np.int64).tobytes()
        if key not in first:
            first[key] = len(heads)
            heads.append(i)
        ids[i] = first[key]
    return ids, heads


def can_share_prefix(model: torch.nn.Module, contexts: Sequence[np.ndarray]) -> bool:
    """True when :func:`shared_prefix_logprobs` applies and saves work: some rows share a context, every
    context has >= 2 tokens, the head is a bias-free linear and the decoder is a transformers model with
    plain full-attention cache layers."""
    _, heads = shared_context_groups(contexts)
    if len(heads) == len(contexts) or any(len(c) < 2 for c in contexts):
        return False
    if not _fusable_head(model.get_output_embeddings()):  # type: ignore[operator]
        return False
    config = getattr(model, "config", None)
    body = model.get_decoder() if hasattr(model, "get_decoder") else None  # type: ignore[operator]
    if config is None or body is None:
        return False
    try:
        takes = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):
        return False
    if cache_keyword(body) not in takes or "position_ids" not in takes:
        return False
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except (TypeError, ValueError, AttributeError):  # a config transformers' cache cannot read
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def shared_prefix_logprobs(
    model: torch.nn.Module,
    contexts: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    device: torch.device,
    temperature: float | torch.Tensor = 1.0,
    *,
    vocab_size: int | None = None,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` of ``contexts[i] + targets[i]`` with each distinct context computed once.

    The G rows of a GRPO group (and the K branches of a DEEP-GRPO pivot) share their context. This runs
    the decoder once over each distinct context but its last token (``(n_contexts, P)``, right-padded),
    copies each one's KV cache to its rows (a differentiable index, so the gradient of every row flows
    into the one shared prefix), then runs the rows' suffixes ``context[-1] + target[:-1]`` against that
    cache. The result equals the packed path's up to float rounding (tests/agent/test_fast_update.py).
    Check :func:`can_share_prefix` first.

    Returns:
        ``(logp, mask)``: (B, T) fp32 log-probs (0 on padding) and the (B, T) bool target mask.
    """
    from transformers import DynamicCache

    groups, heads = shared_context_groups(contexts)
    b = len(contexts)
    prefix_len = [len(contexts[h]) - 1 for h in heads]
    width = max(prefix_len)
    pre_ids = np.full((len(heads), width), pad_id, dtype=np.int64)
    pre_att = np.zeros((len(heads), width), dtype=np.int64)
    for g, h in enumerate(heads):
        pre_ids[g, : prefix_len[g]] = contexts[h][:-1]
        pre_att[g, : prefix_len[g]] = 1  # right padding: every prefix query sees its real tokens
    n_t = [len(t) for t in targets]
    t_max, s_max = max(max(n_t), 1), max(max(n_t), 1)
    suf_ids = np.full((b, s_max), pad_id, dtype=np.int64)
    att = np.zeros((b, width + s_max), dtype=np.int64)
    pos = np.zeros((b, s_max), dtype=np.int64)
    tgt = np.zeros((b, t_max), dtype=np.int64)
    msk = np.zeros((b, t_max), dtype=bool)
    for i in range(b):
        g, n = int(groups[i]), n_t[i]
        suf_ids[i, 0] = contexts[i][-1]
        suf_ids[i, 1:n] = targets[i][: n - 1]
        att[i, :width] = pre_att[g]
        att[i, width : width + max(n, 1)] = 1
        pos[i] = prefix_len[g] + np.arange(s_max)
        tgt[i, :n] = targets[i]
        msk[i, :n] = True

    def as_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(device)

    body = model.get_decoder()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    key = cache_keyword(body)
    cache = DynamicCache(config=model.config)  # type: ignore[arg-type]
    pre_pos = as_t(np.broadcast_to(np.arange(width), (len(heads), width)).copy())
    body(input_ids=as_t(pre_ids), attention_mask=as_t(pre_att), position_ids=pre_pos, use_cache=True, **{key: cache})
    cache.batch_select_indices(as_t(groups))  # (n_contexts, ...) -> (B, ...): the rows share the prefix
    hidden = body(input_ids=as_t(suf_ids), attention_mask=as_t(att), position_ids=as_t(pos), use_cache=True,
                  **{key: cache}).last_hidden_state  # (B, S, H); position t predicts target t
    mask = as_t(msk)
    rows, cols = mask.nonzero(as_tuple=True)
    logp = chosen_logprobs(hidden[rows, cols], head, as_t(tgt)[rows, cols],
                           _position_temperatures(temperature, rows, hidden), vocab_size=vocab_size)
    return _scatter_rows(logp, mask), mask
