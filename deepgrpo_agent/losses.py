"""GRPO's policy loss as small pure functions: clipped surrogate, k3 KL, and loss aggregations.

Everything follows docs/methods.md §1. Shapes: ``B`` sequences (rows) by ``T`` token positions; ``mask``
is (B, T) and True (non-zero) exactly on the response tokens that get a loss, False on prompt, prefix
and padding positions.

Aggregations are chosen once, by name, with :func:`get_aggregation`. Each one is a quotient
``numerator(values, mask) / denominator(mask)`` whose numerator is a *sum over rows*, which is what
makes exact gradient accumulation possible. To split a batch into micro-batches whose gradients add up
to the full batch's gradient, compute the denominator once on the full batch's mask and divide every
micro-batch's numerator by it::

    agg = get_aggregation(config.loss_aggregation)
    denominator = agg.denominator(full_mask, max_tokens=config.max_new_tokens)
    for rows in micro_batches:
        part = agg.numerator(per_token_loss[rows], full_mask[rows], max_tokens=config.max_new_tokens)
        (part / denominator).backward()

Calling ``agg(values_mb, mask_mb)`` on each micro-batch instead would divide each by its own token
count and weigh tokens differently from the full batch whenever micro-batches differ in size.

An empty mask (no response tokens, or no rows) gives a loss of exactly 0 that still has a gradient
(of zeros), never NaN: denominators of 0 are replaced by 1 and the numerator is then 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import torch
from torch import Tensor

# -- clipped surrogate and KL -------------------------------------------------------------------------


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    *,
    eps_low: float,
    eps_high: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-token clipped surrogate loss of PPO/GRPO, with optional clip-higher and dual clip.

    With ``rho = exp(logp - old_logp)`` (docs/methods.md §1; PPO's L^CLIP, eq. (7) of Schulman et al.,
    2017, negated to be minimized; asymmetric bounds as in DAPO's clip-higher)::

        l = max(-A * rho, -A * clip(rho, 1 - eps_low, 1 + eps_high))
        l = min(l, -dual_clip * A)          where A < 0, if dual_clip is set (dual-clip PPO)

    Args:
        logp: (B, T) log-probs of the sampled tokens under the policy being trained.
        old_logp: (B, T) log-probs under the policy that sampled them; treated as a constant.
        advantages: (B,) one advantage per sequence, broadcast to its tokens, or (B, T) per token;
            treated as a constant.
        eps_low: Lower clip range, in [0, 1): ratios below ``1 - eps_low`` stop pushing A < 0 tokens.
        eps_high: Upper clip range, >= 0: ratios above ``1 + eps_high`` stop pushing A > 0 tokens.
        dual_clip: Constant ``c > 1`` capping the loss of A < 0 tokens at ``c * |A|``; None = off.

    Returns:
        ``(loss, clipped)``: the (B, T) per-token loss (unmasked: aggregate it with a mask), and a
        (B, T) bool that is True where a clip is active, i.e. where the token's gradient is zero because
        of clipping (ratio clip or dual clip).

    Raises:
        ValueError: On mismatched shapes or clip parameters out of range.
    """
    if logp.dim() != 2 or logp.shape != old_logp.shape:
        raise ValueError(
            f"Expected `logp` and `old_logp` of the same shape (B, T), got {tuple(logp.shape)} and "
            f"{tuple(old_logp.shape)}."
        )
    if advantages.shape == logp.shape:
        adv = advantages.detach()  # (B, T)
    elif advantages.dim() == 1 and advantages.shape[0] == logp.shape[0]:
        adv = advantages.detach().unsqueeze(-1)  # (B, 1), broadcast over tokens
    else:
        raise ValueError(
            f"Expected `advantages` of shape (B,) = ({logp.shape[0]},) or (B, T) = {tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)}."
        )
    if not 0.0 <= eps_low < 1.0:
        raise ValueError(f"Expected `eps_low` in [0, 1) so that 1 - eps_low > 0, got {eps_low}.")
    if eps_high < 0.0:
        raise ValueError(f"Expected `eps_high` >= 0, got {eps_high}.")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"Expected `dual_clip` > 1 (e.g. 3.0) or None to disable it, got {dual_clip}.")

    ratio = torch.exp(logp - old_logp.detach())  # (B, T)
    unclipped = -adv * ratio  # (B, T)
    clipped_value = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # (B, T)
    # max(unclipped, clipped_value) picks the clipped branch exactly in these two regimes; selecting
    # with `where` keeps the mask and the gradient in agreement (no half-gradients at ties).
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))  # (B, T)
    loss = torch.where(clipped, clipped_value, unclipped)  # (B, T)
    if dual_clip is not None:
        cap = -dual_clip * adv  # (B, 1) or (B, T); positive where A < 0
        dual = (adv < 0) & (loss > cap)  # (B, T)
        loss = torch.where(dual, cap.expand_as(loss), loss)
        clipped = clipped | dual
    return loss, clipped


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (docs/methods.md §1; Schulman's "Approximating KL").

    ``k3 = exp(ref - logp) - (ref - logp) - 1``: non-negative, unbiased for tokens sampled from pi, and
    0 where the two log-probs agree.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the trained policy.
        ref_logp: (B, T) log-probs under the frozen reference policy; treated as a constant.

    Returns:
        (B, T) per-token KL estimate (unmasked).
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(
            f"Expected `logp` and `ref_logp` of the same shape, got {tuple(logp.shape)} and "
            f"{tuple(ref_logp.shape)}."
        )
    diff = ref_logp.detach() - logp  # (B, T)
    return torch.exp(diff) - diff - 1.0


# -- aggregations -------------------------------------------------------------------------------------


class Numerator(Protocol):
    """Sum over rows of a batch's contribution: ``(B, T) values, (B, T) mask -> () tensor``."""

    def __call__(self, values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor: ...


class Denominator(Protocol):
    """The normalizer of a (full) batch, from its (B, T) mask; never 0."""

    def __call__(self, mask: Tensor, *, max_tokens: int | None = None) -> float: ...


@dataclass(frozen=True)
class Aggregation:
    """A way to reduce (B, T) per-token losses to one number: ``numerator / denominator``.

    Attributes:
        name: The name used in configs (``loss_aggregation``).
        numerator: Sum over rows; micro-batch numerators add up to the full batch's.
        denominator: Computed once on the full batch's mask (see the module docstring).
    """

    name: str
    numerator: Numerator
    denominator: Denominator

    def __call__(self, values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
        """The aggregate of a whole batch: (B, T), (B, T) -> () tensor."""
        return self.numerator(values, mask, max_tokens=max_tokens) / self.denominator(
            mask, max_tokens=max_tokens
        )


def _bool_mask(values: Tensor, mask: Tensor) -> Tensor:
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(
            f"Expected `values` and `mask` of the same shape (B, T), got {tuple(values.shape)} and "
            f"{tuple(mask.shape)}."
        )
    return mask.bool()


def _nonzero(count: float) -> float:
    return count if count > 0 else 1.0


def _masked_sum(values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
    m = _bool_mask(values, mask)
    # `where`, not `values * mask`: padding positions may hold inf/NaN, and inf * 0 is NaN.
    return torch.where(m, values, torch.zeros_like(values)).sum()  # ()


def _token_count(mask: Tensor, *, max_tokens: int | None = None) -> float:
    return _nonzero(float(mask.bool().sum()))


def _sequence_means_sum(values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
    m = _bool_mask(values, mask)
    per_row = torch.where(m, values, torch.zeros_like(values)).sum(dim=-1)  # (B,)
    lengths = m.sum(dim=-1).clamp_min(1)  # (B,); empty rows give 0 / 1 = 0
    return (per_row / lengths).sum()  # ()


def _nonempty_sequences(mask: Tensor, *, max_tokens: int | None = None) -> float:
    return _nonzero(float(mask.bool().any(dim=-1).sum()))


def _constant(mask: Tensor, *, max_tokens: int | None = None) -> float:
    if max_tokens is None or max_tokens < 1:
        raise ValueError(
            f"Expected `max_tokens` >= 1 for the 'dr-grpo' aggregation, which divides by "
            f"(number of sequences x max_tokens), got {max_tokens}; pass the response token budget "
            f"(config `max_new_tokens`)."
        )
    return _nonzero(float(mask.shape[0] * max_tokens))


def token_mean(values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
    """Mean over every response token of the batch (DAPO): ``sum(v * m) / sum(m)``.

    Args:
        values: (B, T) per-token values.
        mask: (B, T) response-token mask.
        max_tokens: Unused; accepted so that every aggregation has the same signature.

    Returns:
        () the mean; 0 (with a gradient) when the mask is empty.
    """
    return _masked_sum(values, mask) / _token_count(mask)


def sequence_mean(values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
    """Mean over sequences of each sequence's token mean (original GRPO).

    Sequences without response tokens are left out of the outer mean.

    Args:
        values: (B, T) per-token values.
        mask: (B, T) response-token mask.
        max_tokens: Unused; accepted so that every aggregation has the same signature.

    Returns:
        () the mean; 0 (with a gradient) when the mask is empty.
    """
    return _sequence_means_sum(values, mask) / _nonempty_sequences(mask)


def constant_normalizer(values: Tensor, mask: Tensor, *, max_tokens: int | None = None) -> Tensor:
    """Sum over response tokens divided by a constant, ``B * max_tokens`` (Dr.GRPO).

    Unlike the two means, a sequence's weight does not depend on its length or on the other
    sequences' lengths, which removes GRPO's length bias.

    Args:
        values: (B, T) per-token values.
        mask: (B, T) response-token mask.
        max_tokens: The response token budget; required.

    Returns:
        () the normalized sum; 0 (with a gradient) when the mask is empty.

    Raises:
        ValueError: If ``max_tokens`` is None or < 1.
    """
    return _masked_sum(values, mask) / _constant(mask, max_tokens=max_tokens)


AGGREGATIONS: Mapping[str, Aggregation] = MappingProxyType(
    {
        "token-mean": Aggregation("token-mean", _masked_sum, _token_count),
        "sequence-mean": Aggregation("sequence-mean", _sequence_means_sum, _nonempty_sequences),
        "dr-grpo": Aggregation("dr-grpo", _masked_sum, _constant),
    }
)
"""Name -> aggregation; ``AGGREGATIONS[name](v, m)`` equals the function of the same method."""


def get_aggregation(name: str) -> Aggregation:
    """The aggregation called ``name`` (config field ``loss_aggregation``).

    Raises:
        ValueError: For an unknown name, listing the valid ones.
    """
    try:
        return AGGREGATIONS[name]
    except KeyError as e:
        raise ValueError(f"Expected a loss aggregation in {sorted(AGGREGATIONS)}, got {name!r}.") from e
