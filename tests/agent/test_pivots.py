"""DEEP-GRPO pivot math against hand-computed values (docs/methods.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from deepgrpo_agent.pivots import (
    Recoverability,
    boundary_table,
    candidates,
    fit_logistic,
    sample_pivots,
    segment_ends,
    utility,
)

PERIOD = 9  # token id of "." in these hand-made trajectories
TABLE = np.zeros(16, dtype=bool)
TABLE[PERIOD] = True


def test_sentence_segments_candidates_and_ratios():
    # response: "a b . c . d e . f" -> segments end after tokens 3, 5, 8 and the tail ends at 9
    response = np.array([1, 2, PERIOD, 3, PERIOD, 4, 5, PERIOD, 6])
    ends = segment_ends(response, mode="sentence", boundary_ids=TABLE)
    np.testing.assert_array_equal(ends, [3, 5, 8, 9])
    cand = candidates(ends, max_depth=100)
    # T = n + 1 = 5; candidates: root (i=0, depth 0) and ends of segments 1..3 (the last is excluded)
    np.testing.assert_array_equal(cand.depths, [0, 3, 5, 8])
    np.testing.assert_allclose(cand.ratios, [1 / 5, 2 / 5, 3 / 5, 4 / 5])


def test_response_ending_with_period_and_budget():
    response = np.array([1, PERIOD, 2, PERIOD])
    ends = segment_ends(response, mode="sentence", boundary_ids=TABLE)
    np.testing.assert_array_equal(ends, [2, 4])  # the final period closes the last segment
    cand = candidates(ends, max_depth=2)  # depth 2 leaves no room under a budget of 2
    np.testing.assert_array_equal(cand.depths, [0])
    np.testing.assert_allclose(cand.ratios, [1 / 3])


def test_token_segments():
    ends = segment_ends(np.arange(10), mode="tokens", segment_tokens=4)
    np.testing.assert_array_equal(ends, [4, 8, 10])
    with pytest.raises(ValueError, match="segment_tokens"):
        segment_ends(np.arange(3), mode="tokens", segment_tokens=0)
    with pytest.raises(ValueError, match="boundary_ids"):
        segment_ends(np.arange(3), mode="sentence")


def test_line_segments_on_the_arithmetic_codec():
    # Arithmetic-v0 writes one step per line: every newline ends a segment, '.' never occurs.
    from deepgrpo_env.arithmetic import CharCodec

    codec = CharCodec()
    text = "3*4=12\n12+5=17\nA: 17"
    response = np.array(codec.encode(text))
    lines = boundary_table(codec.decode, codec.vocab_size, "line")
    np.testing.assert_array_equal(segment_ends(response, mode="line", boundary_ids=lines), [7, 15, len(text)])
    periods = boundary_table(codec.decode, codec.vocab_size, "sentence")
    np.testing.assert_array_equal(segment_ends(response, mode="sentence", boundary_ids=periods), [len(text)])


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_utility_matches_formula_with_paper_fit(gamma):
    r = np.array([0.1, 0.25, 0.5, 1.0])
    p = 1 / (1 + np.exp(-(-3.17 * r + 1.43)))  # the paper's fitted example
    np.testing.assert_allclose(p[[0, 3]], [0.7527, 0.1493], atol=1e-4)  # "0.75 at r=0.1, 0.15 at r=1"
    expected = p * r**gamma / np.sum(p * r**gamma)
    np.testing.assert_allclose(utility(r, p, gamma), expected, rtol=1e-12)


def test_utility_limits():
    r = np.array([0.2, 0.4, 0.6])
    np.testing.assert_allclose(utility(r, np.ones(3), 0.0), [1 / 3] * 3)
    root_only = utility(r, np.ones(3), -200.0)
    assert root_only[0] > 1 - 1e-12


def test_sample_pivots_without_replacement():
    rng = np.random.default_rng(0)
    q = np.array([0.1, 0.2, 0.3, 0.4])
    picks = [tuple(sample_pivots(q, 2, rng)) for _ in range(2000)]
    assert all(len(set(p)) == 2 for p in picks)
    assert len(sample_pivots(q, 9, rng)) == 4
    counts = np.bincount(np.array(picks).ravel(), minlength=4)
    assert counts[3] > counts[2] > counts[1] > counts[0]


def test_recoverability_recovers_known_logistic():
    rng = np.random.default_rng(0)
    r = rng.uniform(0, 1, 10_000)
    y = rng.uniform(size=r.size) < 1 / (1 + np.exp(-(-3.17 * r + 1.43)))
    phi = Recoverability()
    np.testing.assert_array_equal(phi(np.array([0.3])), [1.0])  # unfitted: P = 1
    phi.add(r.tolist(), y.tolist())
    assert phi.fitted
    assert abs(phi.w + 3.17) < 0.25 and abs(phi.b - 1.43) < 0.12


def test_recoverability_waits_for_both_classes_and_is_fifo():
    phi = Recoverability(capacity=30)
    phi.add([0.5] * 20, [True] * 20)
    assert not phi.fitted  # only one class
    phi.add([0.9] * 11, [False] * 11)
    assert phi.fitted and len(phi.buffer) == 30  # capacity keeps the newest 30
    state = phi.state_dict()
    other = Recoverability()
    other.load_state_dict(state)
    assert other.w == phi.w and list(other.buffer) == list(phi.buffer)


def test_fit_logistic_matches_l2_optimum():
    x = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    y = np.array([1, 1, 1, 0, 1, 0], dtype=float)
    w, b = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(w * x + b)))
    grad = np.array([w + np.sum((p - y) * x), np.sum(p - y)])  # stationarity of 0.5 w^2 + sum logloss
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)


def test_recoverability_refits_only_past_ten_samples_of_each_class():
    """methods.md §2: P_phi = 1 until the buffer holds more than 10 samples of both classes."""
    phi = Recoverability()
    phi.add([0.2] * 10, [True] * 10)
    phi.add([0.8] * 10, [False] * 10)
    assert not phi.fitted  # exactly 10 of each: not yet
    np.testing.assert_array_equal(phi(np.array([0.2, 0.8])), [1.0, 1.0])
    phi.add([0.2], [True])
    assert not phi.fitted  # 11 successes, 10 failures
    phi.add([0.8], [False])
    assert phi.fitted and phi.w is not None and phi.w < 0  # deeper pivots fail here: P falls with r
    p = phi(np.array([0.2, 0.8]))
    assert p[0] > 0.5 > p[1]
