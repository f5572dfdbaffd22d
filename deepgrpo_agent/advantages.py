"""Group-relative advantages of GRPO and statistics of reward groups (docs/methods.md §1).

Rewards come as one flat ``(N,)`` tensor with a parallel ``(N,)`` tensor of group ids (one group per
prompt, or per pivot in DEEP-GRPO's local stream). Groups may differ in size and their ids need not
be contiguous or sorted. ``NaN`` marks an unscorable sample (the verifier returned ``None`` or timed
out): it gets advantage 0 and is left out of its group's mean and standard deviation, as TRL does.

Choices made here (the papers leave them open):

- Standard deviations are *population* deviations (``unbiased=False``, divide by n). TRL uses the
  sample deviation (divide by n - 1), which makes its "group"-scaled advantages smaller by a factor
  sqrt((n - 1) / n). We prefer n because it is defined for every group that has a valid sample and
  gives each scaled group an RMS advantage of exactly 1 (up to ``eps``).
- A group whose valid rewards are all equal (or that has fewer than two valid rewards) gets advantages
  of exactly 0, not merely about 0: ``1/3 + 1/3 + 1/3 - 1`` is not 0 in floating point, and the
  DEEP-GRPO stream filters samples by ``|A| < 1e-8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from deepgrpo_env.grading import CORRECT_THRESHOLD

AdvantageScale = Literal["group", "batch", "none"]
"""How mean-centred advantages are scaled: by the group's std, the batch's std, or not at all."""

_SCALES = get_args(AdvantageScale)


@dataclass(frozen=True)
class _Groups:
    """Per-group statistics of the valid (non-NaN) rewards; G = number of distinct group ids."""

    member_of: Tensor  # (N,) int64: each sample's group, as a position in 0..G-1
    valid: Tensor  # (N,) bool: reward is not NaN
    num_valid: Tensor  # (G,) number of valid rewards
    mean: Tensor  # (G,) mean of the valid rewards (0 for a group with none)
    zero_variance: Tensor  # (G,) bool: fewer than two valid rewards, or all of them equal


def _check_inputs(rewards: Tensor, group_ids: Tensor) -> Tensor:
    if rewards.dim() != 1 or group_ids.dim() != 1 or rewards.shape != group_ids.shape:
        raise ValueError(
            f"Expected `rewards` and `group_ids` to be 1-D tensors of the same length (N,), got shapes "
            f"{tuple(rewards.shape)} and {tuple(group_ids.shape)}; flatten them with .reshape(-1)."
        )
    if group_ids.is_floating_point() or group_ids.is_complex() or group_ids.dtype == torch.bool:
        raise ValueError(f"Expected integer `group_ids`, got dtype {group_ids.dtype}; convert with .long().")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    if bool(torch.isinf(rewards).any()):
        raise ValueError(
            "Expected finite rewards (or NaN for unscorable samples), got +/-inf; check the verifier's "
            "scores."
        )
    return rewards


def _group(rewards: Tensor, group_ids: Tensor) -> _Groups:
    _, member_of = torch.unique(group_ids, return_inverse=True)  # (N,)
    num_groups = int(member_of.max()) + 1 if member_of.numel() else 0
    valid = ~torch.isnan(rewards)  # (N,)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))  # (N,)
    zeros = rewards.new_zeros(num_groups)  # (G,)
    num_valid = zeros.index_add(0, member_of, valid.to(rewards.dtype))  # (G,)
    mean = zeros.index_add(0, member_of, filled) / num_valid.clamp_min(1)  # (G,)
    inf = torch.full_like(rewards, float("inf"))
    low = zeros.scatter_reduce(0, member_of, torch.where(valid, rewards, inf), "amin", include_self=False)
    high = zeros.scatter_reduce(0, member_of, torch.where(valid, rewards, -inf), "amax", include_self=False)
    zero_variance = (num_valid < 2) | (high <= low)  # (G,)
    return _Groups(member_of, valid, num_valid, mean, zero_variance)


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    scale: AdvantageScale = "none",
    eps: float = 1e-6,
) -> Tensor:
    """GRPO's group-relative advantages ``A_i = (R_i - mean_group R) / s`` (docs/methods.md §1).

    Args:
        rewards: (N,) rewards; ``NaN`` marks an unscorable sample (advantage 0, excluded from its
            group's statistics). Integer rewards are converted to float32.
        group_ids: (N,) integer group id of each sample (any values, any order, any group sizes).
        scale: ``"none"``: ``s = 1``, mean-centring only (Dr.GRPO; the DEEP-GRPO paper's baseline).
            ``"group"``: ``s = std_group(R) + eps`` (original GRPO). ``"batch"``: ``s = std(R) + eps``
            over every valid reward of the batch. Both are population deviations (divide by n).
        eps: Added to the deviation so that a near-constant group does not blow up.

    Returns:
        (N,) advantages with the dtype of ``rewards``; exactly 0 for unscorable samples and for every
        sample of a group with fewer than two valid rewards or all valid rewards equal.

    Raises:
        ValueError: On mismatched shapes, non-integer group ids, infinite rewards or an unknown scale.
    """
    if scale not in _SCALES:
        raise ValueError(f"Expected `scale` in {list(_SCALES)}, got {scale!r}.")
    rewards = _check_inputs(rewards, group_ids)
    if rewards.numel() == 0:
        return rewards.clone()
    g = _group(rewards, group_ids)
    centred = torch.where(g.valid, rewards - g.mean[g.member_of], torch.zeros_like(rewards))  # (N,)
    if scale == "group":
        variance = centred.new_zeros(len(g.num_valid)).index_add(0, g.member_of, centred.square())  # (G,)
        std = (variance / g.num_valid.clamp_min(1)).sqrt()  # (G,)
        centred = centred / (std[g.member_of] + eps)
    elif scale == "batch":
        valid_rewards = rewards[g.valid]  # (V,)
        std = torch.std(valid_rewards, correction=0) if valid_rewards.numel() else rewards.new_zeros(())
        centred = centred / (std + eps)
    # Exact zeros for groups without signal (see the module docstring).
    return torch.where(g.zero_variance[g.member_of], torch.zeros_like(centred), centred)


def zero_variance_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Which samples belong to a group that carries no learning signal.

    Args:
        rewards: (N,) rewards, ``NaN`` = unscorable.
        group_ids: (N,) integer group ids.

    Returns:
        (N,) bool: True where the sample's group has fewer than two valid rewards or all of its valid
        rewards are equal (every member of the group, unscorable ones included, gets the group's flag).
    """
    rewards = _check_inputs(rewards, group_ids)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    g = _group(rewards, group_ids)
    return g.zero_variance[g.member_of]


@dataclass(frozen=True)
class GroupStats:
    """Summary of a batch's reward groups, for logging (``rollout/*`` metrics).

    The four group categories all-correct, all-wrong, mixed, and "no valid reward" partition the
    groups, so the first three fractions sum to 1 unless some group is entirely unscorable. Every
    fraction is 0.0 for an empty batch.

    Attributes:
        num_groups: Number of distinct group ids.
        zero_variance_fraction: Fraction of groups with fewer than two valid rewards or all equal.
        all_correct_fraction: Fraction of groups with a valid reward whose valid rewards are all
            correct (``R >= correct_threshold``).
        all_wrong_fraction: Fraction of groups with a valid reward and no correct one.
        mixed_fraction: Fraction of groups with both correct and wrong valid rewards.
        unscorable_fraction: Fraction of *samples* (not groups) whose reward is NaN.
    """

    num_groups: int
    zero_variance_fraction: float
    all_correct_fraction: float
    all_wrong_fraction: float
    mixed_fraction: float
    unscorable_fraction: float


def group_stats(
    rewards: Tensor, group_ids: Tensor, *, correct_threshold: float = CORRECT_THRESHOLD
) -> GroupStats:
    """Counts zero-variance, all-correct, all-wrong and mixed groups (docs/methods.md §1 and ERPO, §3).

    Args:
        rewards: (N,) rewards, ``NaN`` = unscorable.
        group_ids: (N,) integer group ids.
        correct_threshold: A valid reward counts as correct when ``R >= correct_threshold`` (default
            :data:`deepgrpo_env.grading.CORRECT_THRESHOLD`, the library's one definition).

    Returns:
        The batch's :class:`GroupStats`.
    """
    rewards = _check_inputs(rewards, group_ids)
    if rewards.numel() == 0:
        return GroupStats(0, 0.0, 0.0, 0.0, 0.0, 0.0)
    g = _group(rewards, group_ids)
    correct = (g.valid & (rewards >= correct_threshold)).to(rewards.dtype)  # (N,)
    num_correct = rewards.new_zeros(len(g.num_valid)).index_add(0, g.member_of, correct)  # (G,)
    scored = g.num_valid > 0  # (G,)
    num_groups = len(g.num_valid)

    def fraction(flags: Tensor) -> float:
        return float(flags.sum()) / num_groups

    return GroupStats(
        num_groups=num_groups,
        zero_variance_fraction=fraction(g.zero_variance),
        all_correct_fraction=fraction(scored & (num_correct == g.num_valid)),
        all_wrong_fraction=fraction(scored & (num_correct == 0)),
        mixed_fraction=fraction((num_correct > 0) & (num_correct < g.num_valid)),
        unscorable_fraction=float((~g.valid).sum()) / rewards.numel(),
    )
