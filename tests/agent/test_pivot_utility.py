"""Pluggable pivot utilities: features and selections against hand-computed values on tiny examples."""

from __future__ import annotations

import numpy as np
import pytest

from deepgrpo_agent.deep_grpo import DeepGRPOConfig
from deepgrpo_agent.pivot_utility import (
    PIVOT_UTILITIES,
    LearnedUtility,
    PivotSelector,
    candidate_features,
    fit_logistic_nd,
    top_choice,
)
from deepgrpo_agent.pivots import Recoverability, candidates, sample_pivots, segment_ends, utility

PERIOD = 9
TABLE = np.zeros(16, dtype=bool)
TABLE[PERIOD] = True
# "a b . c . d e . f": segments [0,3) [3,5) [5,8) [8,9); candidates at depths 0, 3, 5, 8
RESPONSE = np.array([1, 2, PERIOD, 3, PERIOD, 4, 5, PERIOD, 6])
# sampled-token probabilities: the least likely token (p = 0.05) is token 6, inside segment [5, 8)
PROBS = np.array([0.9, 0.8, 0.99, 0.6, 0.99, 0.7, 0.05, 0.99, 0.5])
ENTROPY = np.array([0.1, 0.2, 0.0, 1.5, 0.0, 0.3, 0.9, 0.0, 0.4])


def features():
    ends = segment_ends(RESPONSE, mode="sentence", boundary_ids=TABLE)
    cand = candidates(ends, max_depth=100)
    return candidate_features(cand, ends, np.log(PROBS), ENTROPY)


def test_features_by_hand():
    f = features()
    np.testing.assert_allclose(f.ratios, [1 / 5, 2 / 5, 3 / 5, 4 / 5])
    # max -log p per following segment: [0,3) -> -log 0.8, [3,5) -> -log 0.6, [5,8) -> -log 0.05, [8,9) -> -log 0.5
    np.testing.assert_allclose(f.surprisal, -np.log([0.8, 0.6, 0.05, 0.5]))
    # entropy of the first token after each candidate: tokens 0, 3, 5, 8
    np.testing.assert_allclose(f.entropy, [0.1, 1.5, 0.3, 0.4])
    np.testing.assert_array_equal(f.segment_index, [0, 1, 2, 3])
    assert f.matrix().shape == (4, 4)


def test_features_reject_mismatched_arrays():
    ends = segment_ends(RESPONSE, mode="sentence", boundary_ids=TABLE)
    with pytest.raises(ValueError, match="one log-prob and one entropy per response token"):
        candidate_features(candidates(ends, max_depth=100), ends, np.zeros(3), ENTROPY)
    # the trainer's lenient mode pads what is missing with 0 (the paper's utility reads only r)
    lenient = candidate_features(candidates(ends, max_depth=100), ends, np.zeros(3), ENTROPY, strict=False)
    np.testing.assert_allclose(lenient.surprisal, 0.0)
    np.testing.assert_allclose(lenient.ratios, [1 / 5, 2 / 5, 3 / 5, 4 / 5])


@pytest.mark.parametrize(("name", "expected"), [("surprisal", [2]), ("entropy", [1]), ("root", [0])])
def test_deterministic_selections_by_hand(name, expected):
    sel = PivotSelector(name, 2.0, Recoverability())
    assert sel.choose(features(), 1, np.random.default_rng(0)).tolist() == expected


def test_two_surprisal_pivots_take_the_two_least_likely_segments():
    sel = PivotSelector("surprisal", 2.0, Recoverability())
    # surprisal per segment: 0.22, 0.51, 3.0, 0.69 -> the top two are candidates 2 and 3
    assert sel.choose(features(), 2, np.random.default_rng(0)).tolist() == [2, 3]


def test_paper_utility_draws_exactly_as_before():
    """'paper' consumes the generator exactly like the pre-pluggable code: same pivots, same stream."""
    f = features()
    phi = Recoverability()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sel = PivotSelector("paper", 2.0, phi)
    for _ in range(20):
        want = sample_pivots(utility(f.ratios, phi(f.ratios), 2.0), 1, a)
        assert sel.choose(f, 1, b).tolist() == want.tolist()
    # Q ~ r^2 with P_phi = 1: weights 1, 4, 9, 16 over 30 -> the deepest candidate most often
    counts = np.bincount([int(sel.choose(f, 1, b)[0]) for _ in range(3000)], minlength=4) / 3000
    np.testing.assert_allclose(counts, np.array([1, 4, 9, 16]) / 30, atol=0.03)


def test_uniform_covers_every_candidate_equally():
    sel = PivotSelector("uniform", 2.0, Recoverability())
    rng = np.random.default_rng(1)
    counts = np.bincount([int(sel.choose(features(), 1, rng)[0]) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, 0.25, atol=0.03)


def test_top_choice_breaks_ties_at_random_but_keeps_strict_winners():
    rng = np.random.default_rng(0)
    scores = np.array([1.0, 3.0, 2.0, 2.0])
    picks = {tuple(top_choice(scores, 2, rng).tolist()) for _ in range(50)}
    assert picks == {(1, 2), (1, 3)}  # 1 is always in; the tie between 2 and 3 is split
    assert top_choice(scores, 9, rng).tolist() == [0, 1, 2, 3]
    assert top_choice(scores, 0, rng).size == 0


def test_learned_falls_back_to_paper_then_prefers_mixed_positions():
    phi = Recoverability()
    sel = PivotSelector("learned", 2.0, phi)
    f = features()
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    assert sel.choose(f, 1, b).tolist() == sample_pivots(utility(f.ratios, phi(f.ratios), 2.0), 1, a).tolist()
    # Teach it: pivots at high surprisal had mixed outcomes (rewards [0, 1]), the others all-fail [0, 0].
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.uniform(0, 1, 200), rng.uniform(0, 4, 200), rng.uniform(0, 2, 200),
                            rng.integers(0, 4, 200)])
    mixed = rows[:, 1] > 2.0
    grouped = np.where(mixed[:, None], np.array([[0.0, 1.0]]), np.zeros((1, 2)))
    metrics = sel.observe(rows, grouped, branch_tokens=400)
    assert sel.learned.fitted and metrics["pivot/learned_fitted"] == 1.0
    assert metrics["pivot/mixed_fraction"] == pytest.approx(mixed.mean())
    assert metrics["pivot/mixed_per_kilotoken"] == pytest.approx(1000 * mixed.sum() / 400)
    picks = np.bincount([int(sel.choose(f, 1, rng)[0]) for _ in range(500)], minlength=4)
    assert picks.argmax() == 2  # the surprising segment (surprisal 3.0) is where it now branches


def test_fit_logistic_nd_matches_the_one_feature_fit():
    from deepgrpo_agent.pivots import fit_logistic

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 500)
    y = (rng.uniform(size=500) < 1 / (1 + np.exp(-(-3 * x + 1)))).astype(float)
    w, b = fit_logistic(x, y)
    np.testing.assert_allclose(fit_logistic_nd(x[:, None], y), [w, b], rtol=1e-6)


def test_learned_state_round_trips():
    u = LearnedUtility(min_per_class=1)
    u.add(np.array([[0.1, 1, 0, 0], [0.9, 3, 1, 2], [0.5, 2, 0, 1], [0.2, 0.5, 0, 0]]), [False, True, True, False])
    v = LearnedUtility()
    v.load_state_dict(u.state_dict())
    x = np.array([[0.3, 2.5, 0.5, 1.0]])
    np.testing.assert_allclose(u(x), v(x))


def test_observe_metrics_without_features_and_bad_names():
    sel = PivotSelector("paper", 2.0, Recoverability())
    m = sel.observe(np.zeros((2, 0)), np.array([[0.0, 1.0], [0.0, 0.0]]), branch_tokens=10)
    assert m["pivot/mixed_fraction"] == 0.5 and m["pivot/mixed_per_kilotoken"] == 100.0
    with pytest.raises(ValueError, match="pivot_utility"):
        PivotSelector("best", 2.0, Recoverability())
    with pytest.raises(ValueError, match="pivot_utility"):
        DeepGRPOConfig(pivot_utility="best")
    assert set(PIVOT_UTILITIES) == {"paper", "uniform", "root", "surprisal", "entropy", "learned"}


@pytest.mark.parametrize("name", ["surprisal", "entropy", "root", "learned"])
def test_trainer_branches_where_the_utility_says(tmp_path, name):
    """In a real collect(), every pivot sits at the candidate the utility picks from its root's own log-probs."""
    from deepgrpo_agent.deep_grpo import DeepGRPOTrainer, PivotRollouts
    from tests.agent.test_deep_grpo import VOCAB, deep_config
    from tests.agent.tiny import tiny_model

    trainer = DeepGRPOTrainer(deep_config(tmp_path, pivot_utility=name), model=tiny_model(VOCAB))
    rollouts = trainer.collect()
    assert isinstance(rollouts, PivotRollouts) and rollouts.pivots
    batch = rollouts.roots[0]
    for p in rollouts.pivots:
        response = np.asarray(batch.states[p.row].response_ids)
        ends = segment_ends(response, mode="tokens", segment_tokens=3)
        f = candidate_features(candidates(ends, max_depth=trainer.env.limits.max_response_tokens), ends,
                               batch.logprobs[p.row], batch.entropies[p.row])
        i = int(np.flatnonzero(f.ratios == p.ratio)[0])
        if name == "surprisal":
            assert f.surprisal[i] == f.surprisal.max()
        elif name == "entropy":
            assert f.entropy[i] == f.entropy.max()
        elif name == "root":
            assert p.depth == 0
        assert p.features == tuple(f.matrix()[i])
    _, metrics = trainer.compute_advantages(rollouts)
    assert 0.0 <= metrics["pivot/mixed_fraction"] <= 1.0 and "pivot/mixed_per_kilotoken" in metrics
    trainer.load_strategy_state(trainer.strategy_state())  # the selector checkpoints with the strategy
