"""Clipped surrogate, k3 KL and loss aggregations against hand-computed values (docs/methods.md §1)."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from deepgrpo_agent import config
from deepgrpo_agent.losses import (
    AGGREGATIONS,
    clipped_policy_loss,
    constant_normalizer,
    get_aggregation,
    k3_kl,
    sequence_mean,
    token_mean,
)

F64 = torch.float64


def log_ratios(*rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(logp, old_logp) of one row with exp(logp - old_logp) = rho; logp requires grad."""
    old = torch.full((1, len(rho)), -1.0, dtype=F64)
    logp = (old + torch.log(torch.tensor([rho], dtype=F64))).requires_grad_(True)
    return logp, old


def test_positive_advantage_clips_only_above_one_plus_eps_high():
    # A = +2, eps_low = 0.2, eps_high = 0.28 (clip-higher), band [0.8, 1.28]
    # rho 0.5 : max(-2*0.5, -2*0.8)  = max(-1.0, -1.6)  = -1.0   unclipped (A > 0 never clips below)
    # rho 1.0 : -2.0
    # rho 1.25: -2.5 (inside the band)
    # rho 1.5 : max(-2*1.5, -2*1.28) = max(-3.0, -2.56) = -2.56  clipped
    logp, old = log_ratios(0.5, 1.0, 1.25, 1.5)
    loss, clipped = clipped_policy_loss(logp, old, torch.tensor([2.0], dtype=F64), eps_low=0.2, eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.0, -2.0, -2.5, -2.56]], dtype=F64))
    assert clipped.tolist() == [[False, False, False, True]]
    # d(-A rho)/d logp = -A rho where unclipped, 0 where clipped: -1.0, -2.0, -2.5, 0
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -2.0, -2.5, 0.0]], dtype=F64))


def test_negative_advantage_clips_only_below_one_minus_eps_low():
    # A = -2, band [0.8, 1.28]
    # rho 0.5 : max(2*0.5, 2*0.8)  = max(1.0, 1.6)  = 1.6  clipped
    # rho 1.0 : 2.0;  rho 1.25: 2.5
    # rho 1.5 : max(2*1.5, 2*1.28) = max(3.0, 2.56) = 3.0  unclipped (A < 0 never clips above)
    logp, old = log_ratios(0.5, 1.0, 1.25, 1.5)
    loss, clipped = clipped_policy_loss(
        logp, old, torch.tensor([-2.0], dtype=F64), eps_low=0.2, eps_high=0.28
    )
    torch.testing.assert_close(loss, torch.tensor([[1.6, 2.0, 2.5, 3.0]], dtype=F64))
    assert clipped.tolist() == [[True, False, False, False]]
    loss.sum().backward()  # gradient -A rho = 2 rho where unclipped
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 2.0, 2.5, 3.0]], dtype=F64))


def test_clip_higher_asymmetry():
    # rho = 1.25, A = +1: symmetric eps 0.2 clips it to -1.2; eps_high = 0.28 leaves it at -1.25.
    logp, old = log_ratios(1.25)
    adv = torch.tensor([1.0], dtype=F64)
    symmetric, c1 = clipped_policy_loss(logp, old, adv, eps_low=0.2, eps_high=0.2)
    higher, c2 = clipped_policy_loss(logp, old, adv, eps_low=0.2, eps_high=0.28)
    assert symmetric.item() == pytest.approx(-1.2) and c1.item()
    assert higher.item() == pytest.approx(-1.25) and not c2.item()
    # rho = 0.75, A = -1: below 1 - eps_low = 0.8 either way -> 0.8
    logp, old = log_ratios(0.75)
    low, c3 = clipped_policy_loss(logp, old, -adv, eps_low=0.2, eps_high=0.28)
    assert low.item() == pytest.approx(0.8) and c3.item()


def test_dual_clip_caps_negative_advantage_losses():
    # A = -2, c = 3: cap = -c A = 6.
    # rho 2.5: loss 2*2.5 = 5 < 6 -> 5;  rho 4: 2*4 = 8 > 6 -> 6, clipped (no gradient)
    logp, old = log_ratios(2.5, 4.0)
    loss, clipped = clipped_policy_loss(
        logp, old, torch.tensor([-2.0], dtype=F64), eps_low=0.2, eps_high=0.2, dual_clip=3.0
    )
    torch.testing.assert_close(loss, torch.tensor([[5.0, 6.0]], dtype=F64))
    assert clipped.tolist() == [[False, True]]
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[5.0, 0.0]], dtype=F64))
    # A = +2 is untouched by the dual clip: rho 2.5 and 4 -> -2 * 1.2 = -2.4 (ordinary clip only)
    adv = torch.tensor([2.0], dtype=F64)
    loss, clipped = clipped_policy_loss(logp, old, adv, eps_low=0.2, eps_high=0.2, dual_clip=3.0)
    torch.testing.assert_close(loss, torch.tensor([[-2.4, -2.4]], dtype=F64))
    assert clipped.tolist() == [[True, True]]


def test_per_token_advantages_and_zero_advantage():
    # (B, T) advantages: A = 0 gives loss 0 and no clip; old_logp and advantages are constants.
    logp, old = log_ratios(1.5, 1.5)
    adv = torch.tensor([[0.0, 1.0]], dtype=F64, requires_grad=True)
    loss, clipped = clipped_policy_loss(logp, old, adv, eps_low=0.2, eps_high=0.2)
    torch.testing.assert_close(loss, torch.tensor([[0.0, -1.2]], dtype=F64))
    assert clipped.tolist() == [[False, True]]
    loss.sum().backward()
    assert adv.grad is None  # advantages are constants of the loss
    torch.testing.assert_close(logp.grad, torch.zeros(1, 2, dtype=F64))  # A = 0, and clipped


def test_clipped_policy_loss_rejects_bad_input():
    logp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(logp, logp, torch.zeros(3), eps_low=0.2, eps_high=0.2)
    with pytest.raises(ValueError, match="same shape"):
        clipped_policy_loss(logp, torch.zeros(2, 4), torch.zeros(2), eps_low=0.2, eps_high=0.2)
    with pytest.raises(ValueError, match="eps_low"):
        clipped_policy_loss(logp, logp, torch.zeros(2), eps_low=1.0, eps_high=0.2)
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(logp, logp, torch.zeros(2), eps_low=0.2, eps_high=0.2, dual_clip=1.0)


def test_k3_kl_by_hand():
    # logp = log 0.5, ref = log 0.25: d = ref - logp = -log 2 -> 0.5 + log 2 - 1 = 0.193147...
    # logp = log 0.25, ref = log 0.5: d = +log 2 -> 2 - log 2 - 1 = 0.306852...
    # equal log-probs -> 0
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.3]], dtype=F64))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.3]], dtype=F64))
    ln2 = math.log(2.0)
    torch.testing.assert_close(k3_kl(logp, ref), torch.tensor([[0.5 + ln2 - 1, 1 - ln2, 0.0]], dtype=F64))


# (3, 4) values; row 0 has 2 response tokens, row 1 has 4, row 2 none.
VALUES = torch.arange(1.0, 13.0, dtype=F64).reshape(3, 4)
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool)


def test_token_mean_by_hand():
    # (1 + 2 + 5 + 6 + 7 + 8) / 6 = 29 / 6
    assert token_mean(VALUES, MASK).item() == pytest.approx(29 / 6)


def test_sequence_mean_by_hand():
    # row means 3/2 and 26/4 = 6.5; the empty row is left out: (1.5 + 6.5) / 2 = 4
    assert sequence_mean(VALUES, MASK).item() == pytest.approx(4.0)


def test_dr_grpo_by_hand():
    # 29 / (B * max_tokens) = 29 / (3 * 4); the empty row still counts in B
    assert constant_normalizer(VALUES, MASK, max_tokens=4).item() == pytest.approx(29 / 12)
    assert constant_normalizer(VALUES, MASK, max_tokens=10).item() == pytest.approx(29 / 30)
    with pytest.raises(ValueError, match="max_tokens"):
        constant_normalizer(VALUES, MASK)


def test_table_matches_the_functions():
    functions = {"token-mean": token_mean, "sequence-mean": sequence_mean, "dr-grpo": constant_normalizer}
    assert set(AGGREGATIONS) == set(functions) == set(get_args(config.LossAggregation))
    for name, fn in functions.items():
        agg = get_aggregation(name)
        assert agg.name == name
        torch.testing.assert_close(agg(VALUES, MASK, max_tokens=4), fn(VALUES, MASK, max_tokens=4))
    with pytest.raises(ValueError, match="sequence-mean"):
        get_aggregation("seq-mean")


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_micro_batches_sum_to_the_full_batch(name):
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(5, 6, generator=gen, dtype=F64, requires_grad=True)
    lengths = torch.tensor([6, 1, 0, 3, 5])  # unequal, one empty row
    mask = torch.arange(6) < lengths[:, None]
    agg = get_aggregation(name)

    full = agg(values, mask, max_tokens=6)
    (full_grad,) = torch.autograd.grad(full, values)

    denominator = agg.denominator(mask, max_tokens=6)  # once, on the whole batch
    rows = (slice(0, 2), slice(2, 4), slice(4, 5))
    split = torch.stack([agg.numerator(values[r], mask[r], max_tokens=6) / denominator for r in rows]).sum()
    (split_grad,) = torch.autograd.grad(split, values)
    torch.testing.assert_close(split, full)
    torch.testing.assert_close(split_grad, full_grad)

    # Averaging each micro-batch's own aggregate is *not* the same (so the test above has teeth).
    naive = torch.stack([agg(values[r], mask[r], max_tokens=6) for r in rows]).mean()
    assert not torch.allclose(naive, full)


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_empty_masks_give_zero_with_a_gradient(name):
    agg = get_aggregation(name)
    for shape in [(3, 4), (0, 4)]:
        values = torch.randn(*shape, dtype=F64, requires_grad=True)
        loss = agg(values, torch.zeros(shape, dtype=torch.bool), max_tokens=4)
        assert loss.item() == 0.0
        loss.backward()
        assert values.grad is not None and torch.equal(values.grad, torch.zeros(shape, dtype=F64))


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_padding_values_never_leak_into_the_loss(name):
    values = VALUES.clone()
    values[~MASK] = float("inf")  # e.g. log-probs of padding
    clean = get_aggregation(name)(VALUES, MASK, max_tokens=4)
    torch.testing.assert_close(get_aggregation(name)(values, MASK, max_tokens=4), clean)


def test_aggregation_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        token_mean(VALUES, MASK[:, :2])
