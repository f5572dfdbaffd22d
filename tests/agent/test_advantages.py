"""Group advantages and group statistics against hand-computed values (docs/methods.md §1)."""

from __future__ import annotations

import math
import statistics
from typing import get_args

import pytest
import torch

from deepgrpo_agent import config
from deepgrpo_agent.advantages import AdvantageScale, group_advantages, group_stats, zero_variance_groups

NAN = float("nan")

# Two groups of unequal size, interleaved, with non-contiguous ids 7 and 3:
#   group 7 (positions 0, 2, 4, 6): rewards 1, 0, 0, 1 -> mean 1/2
#   group 3 (positions 1, 3, 5):    rewards 1, 0, 1    -> mean 2/3
REWARDS = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
GROUPS = torch.tensor([7, 3, 7, 3, 7, 3, 7])


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_scale_none_is_mean_centring_only():
    # group 7: R - 1/2 = +1/2, -1/2, -1/2, +1/2; group 3: R - 2/3 = +1/3, -2/3, +1/3
    expected = t(0.5, 1 / 3, -0.5, -2 / 3, -0.5, 1 / 3, 0.5)
    torch.testing.assert_close(group_advantages(REWARDS, GROUPS), expected)
    torch.testing.assert_close(group_advantages(REWARDS, GROUPS, scale="none"), expected)


def test_scale_group_divides_by_the_population_std_of_the_group():
    # group 7: deviations +-1/2, population variance = 4 * (1/4) / 4 = 1/4, std = 1/2 -> A = +-1
    # group 3: deviations 1/3, -2/3, 1/3, variance = (1/9 + 4/9 + 1/9) / 3 = 2/9, std = sqrt(2)/3
    #          -> A = (1/3) / (sqrt(2)/3) = 1/sqrt(2), (-2/3) / (sqrt(2)/3) = -sqrt(2)
    r2 = math.sqrt(2.0)
    expected = t(1.0, 1 / r2, -1.0, -r2, -1.0, 1 / r2, 1.0)
    torch.testing.assert_close(group_advantages(REWARDS, GROUPS, scale="group", eps=0.0), expected)
    # eps is added to the std: group 7 becomes +-0.5 / (0.5 + 0.5) = +-0.5
    assert group_advantages(REWARDS, GROUPS, scale="group", eps=0.5)[0].item() == pytest.approx(0.5)


def test_scale_batch_divides_by_the_std_of_all_valid_rewards():
    # all 7 rewards: four 1s and three 0s -> mean 4/7, population variance (4/7)(3/7) = 12/49,
    # std = sqrt(12)/7; the group-centred advantages above are divided by it.
    std = math.sqrt(12.0) / 7
    expected = t(0.5, 1 / 3, -0.5, -2 / 3, -0.5, 1 / 3, 0.5) / std
    torch.testing.assert_close(group_advantages(REWARDS, GROUPS, scale="batch", eps=0.0), expected)


def test_nan_rewards_get_zero_and_are_left_out_of_the_group_statistics():
    rewards = t(1.0, NAN, 0.0, 1.0)
    groups = torch.tensor([0, 0, 0, 0])
    # valid rewards 1, 0, 1: mean 2/3 -> 1/3, (NaN -> 0), -2/3, 1/3
    torch.testing.assert_close(group_advantages(rewards, groups), t(1 / 3, 0.0, -2 / 3, 1 / 3))
    # population std of 1, 0, 1 is sqrt(2)/3 -> 1/sqrt(2), 0, -sqrt(2), 1/sqrt(2)
    r2 = math.sqrt(2.0)
    torch.testing.assert_close(
        group_advantages(rewards, groups, scale="group", eps=0.0), t(1 / r2, 0.0, -r2, 1 / r2)
    )
    # batch std over the valid rewards only: the same three values here
    torch.testing.assert_close(
        group_advantages(rewards, groups, scale="batch", eps=0.0), t(1 / r2, 0.0, -r2, 1 / r2)
    )


@pytest.mark.parametrize("scale", get_args(AdvantageScale))
def test_groups_without_signal_get_exactly_zero(scale):
    # 0.1 * 3 / 3 != 0.1 in floating point: the mean-centred values would be ~1e-17, not 0.
    rewards = t(0.1, 0.1, 0.1, 1.0, NAN, NAN, NAN, 1.0, 0.0)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3])
    # group 0 all equal, group 1 one valid reward, group 2 none valid, group 3 mixed (+-1/2 before scaling)
    adv = group_advantages(rewards, groups, scale=scale)
    assert torch.equal(adv[:7], torch.zeros(7, dtype=torch.float64))
    assert adv[7] > 0 > adv[8]
    assert not torch.isnan(adv).any()


def test_zero_variance_groups():
    rewards = t(1.0, 1.0, 1.0, 0.0, NAN, 1.0, 0.5, NAN, NAN)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4, 4])
    # 0: equal -> True; 1: 1 vs 0 -> False; 2: one valid -> True (NaN member too); 3: single -> True;
    # 4: nothing valid -> True
    expected = torch.tensor([True, True, False, False, True, True, True, True, True])
    assert torch.equal(zero_variance_groups(rewards, groups), expected)


def test_group_stats_partitions_the_groups():
    rewards = t(1, 1, 0, 0, 1, 0, NAN, NAN, 1, NAN, 0.5, 0.4)
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    # 0: all correct; 1: all wrong; 2: mixed; 3: no valid reward; 4: all correct (one valid);
    # 5: 0.5 >= 0.5 correct, 0.4 wrong -> mixed.  Zero variance: 0, 1, 3, 4.
    stats = group_stats(rewards, groups)
    assert stats.num_groups == 6
    assert stats.zero_variance_fraction == pytest.approx(4 / 6)
    assert stats.all_correct_fraction == pytest.approx(2 / 6)
    assert stats.all_wrong_fraction == pytest.approx(1 / 6)
    assert stats.mixed_fraction == pytest.approx(2 / 6)
    assert stats.unscorable_fraction == pytest.approx(3 / 12)  # per sample, not per group
    # a stricter threshold makes group 5 all wrong
    strict = group_stats(rewards, groups, correct_threshold=0.9)
    assert strict.mixed_fraction == pytest.approx(1 / 6) and strict.all_wrong_fraction == pytest.approx(2 / 6)


def test_empty_batch():
    empty = torch.zeros(0)
    ids = torch.zeros(0, dtype=torch.long)
    assert group_advantages(empty, ids).shape == (0,)
    assert zero_variance_groups(empty, ids).shape == (0,)
    assert group_stats(empty, ids).num_groups == 0


def _reference(rewards: list[float], groups: list[int], scale: str, eps: float) -> list[float]:
    """The obviously-correct slow version: a Python loop over groups."""
    valid = [r for r in rewards if not math.isnan(r)]
    batch_std = statistics.pstdev(valid) if valid else 0.0
    out = []
    for r, g in zip(rewards, groups):
        members = [x for x, h in zip(rewards, groups) if h == g and not math.isnan(x)]
        if math.isnan(r) or len(members) < 2 or len(set(members)) == 1:
            out.append(0.0)
            continue
        a = r - statistics.fmean(members)
        if scale == "group":
            a /= statistics.pstdev(members) + eps
        elif scale == "batch":
            a /= batch_std + eps
        out.append(a)
    return out


@pytest.mark.parametrize("scale", get_args(AdvantageScale))
def test_vectorized_matches_a_python_loop(scale):
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        n = 40
        rewards = torch.randint(0, 3, (n,), generator=gen).double() / 2
        rewards[torch.rand(n, generator=gen) < 0.15] = NAN
        groups = torch.randint(0, 9, (n,), generator=gen) * 11 - 20  # negative, sparse ids
        expected = _reference(rewards.tolist(), groups.tolist(), scale, 1e-6)
        torch.testing.assert_close(group_advantages(rewards, groups, scale=scale), t(*expected))


def test_dtypes_and_input_errors():
    assert group_advantages(torch.tensor([1, 0]), torch.tensor([0, 0])).dtype == torch.float32
    assert group_advantages(REWARDS.float(), GROUPS).dtype == torch.float32
    with pytest.raises(ValueError, match="same length"):
        group_advantages(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer `group_ids`"):
        group_advantages(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        group_advantages(t(1.0, math.inf), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(REWARDS, GROUPS, scale="std")  # type: ignore[arg-type]


def test_config_offers_the_same_scales():
    assert get_args(config.AdvantageScale) == get_args(AdvantageScale)
