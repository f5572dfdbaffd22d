"""Comparison protocols, paired statistics, the paper's ablations and the deviation options (issue 14)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import stats
from deepgrpo_agent.compare import (
    STRATEGIES,
    CompareConfig,
    format_tables,
    paired_rows,
    run_comparison,
    run_config,
    stored_record,
    summarize,
    with_swept_rates,
)
from deepgrpo_agent.deep_grpo import DeepGRPOConfig
from deepgrpo_agent.pivots import Recoverability, boundary_table, depth_histogram
from deepgrpo_agent.samples import TrainSamples
from deepgrpo_agent.trainer import fail_truncated
from deepgrpo_agent.update import UpdateSettings, policy_update
from tests.agent.test_deep_grpo import fake_branches
from tests.agent.tiny import tiny_model

TINY_ENV = {"level": 1, "max_operand": 2, "max_response_tokens": 3}
MAIN = ("grpo-n8", "grpo-matched", "deep-grpo", "erpo", "treerl", "uniform-tree")


def small(tmp_path: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = dict(
        strategies=("grpo", "deep-grpo"), seeds=(0,), protocol="steps", steps=2, num_evals=1, model="random-tiny",
        env_kwargs=TINY_ENV, train={"prompts_per_step": 4, "group_size": 4, "learning_rate": 3e-3,
                                    "device": "cpu", "micro_batch_size": 64, "segment": "line"},
        eval_problems=8, pass_k=2, save_every=1, output_dir=str(tmp_path / "cmp"), plots=False,
    )
    fields.update(overrides)
    return CompareConfig(**fields)


# -- protocol = steps --------------------------------------------------------------------------------
def test_steps_protocol_gives_every_strategy_the_same_optimizer_steps_and_no_token_limit(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=MAIN, steps=30, num_evals=3, matched_group_size=40)
    for name in MAIN:
        c = run_config(cfg, name, seed=1)
        assert (c.total_steps, c.max_generated_tokens, c.eval_every, c.eval_every_tokens) == (30, None, 10, 0)
        assert c.eval_split == "test"
    assert run_config(cfg, "grpo-matched", 0).group_size == 40  # the compute-matched control
    assert run_config(cfg, "grpo-n8", 0).group_size == 8
    tokens = small(tmp_path, strategies=MAIN, protocol="tokens", token_budget=900, num_evals=3)
    for name in MAIN:
        c = run_config(tokens, name, seed=1)
        assert (c.total_steps, c.max_generated_tokens, c.eval_every, c.eval_every_tokens) == (1_000_000, 900, 0, 300)


def test_steps_protocol_end_to_end_equal_steps_and_cost_columns(tmp_path: Path) -> None:
    cfg = small(tmp_path, seeds=(0, 1), baselines=("grpo",))
    summary = run_comparison(cfg)
    runs = json.loads((Path(cfg.output_dir) / "results.json").read_text())["runs"]
    assert sorted((r["strategy"], r["seed"]) for r in runs) == [("deep-grpo", 0), ("deep-grpo", 1), ("grpo", 0),
                                                                ("grpo", 1)]
    for r in runs:
        assert r["steps"] == 2  # every run took exactly the same optimizer steps
        assert r["eval_curve"]["steps"] == [0.0, 2.0]
        assert r["rollouts_per_step"] == pytest.approx((r["root_rollouts"] + r["branch_rollouts"]) / 2)
        assert r["generated_tokens"] > 0 and r["train_wall_s"] > 0
    grpo = [r for r in runs if r["strategy"] == "grpo"]
    assert all(r["rollouts_per_step"] == 16 and r["branch_rollouts"] == 0 for r in grpo)  # 4 prompts x 4 roots
    # GRPO trains on every root's response tokens (DEEP-GRPO drops its zero-advantage rows, maybe all of them).
    assert all(r["trained_tokens"] == r["generated_tokens"] for r in grpo)
    assert summary["protocol"] == "steps" and summary["baselines"] == ["grpo"]
    paired = [p for p in summary["paired"] if p["metric"] == "final_accuracy"]
    assert [(p["strategy"], p["baseline"], p["n"]) for p in paired] == [("deep-grpo", "grpo", 2)]
    table = (Path(cfg.output_dir) / "tables.md").read_text()
    assert "Protocol `steps`: every run takes 2 optimizer steps" in table and "strategy − grpo" in table
    for name in ("runs.csv", "results.csv", "paired.csv"):
        assert (Path(cfg.output_dir) / name).is_file()


def test_protocol_and_baseline_errors_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="protocol"):
        small(tmp_path, protocol="equal")
    with pytest.raises(ValueError, match=r"`num_evals` <= `steps`"):
        small(tmp_path, steps=2, num_evals=3)
    with pytest.raises(ValueError, match="Unknown `baselines`"):
        small(tmp_path, baselines=("grpo-n7",))
    with pytest.raises(ValueError, match="lr_sweep"):
        small(tmp_path, lr_sweep=(1e-4, -1.0))


# -- statistics ------------------------------------------------------------------------------------------
def test_paired_difference_matches_a_hand_computed_example() -> None:
    # d = (0.02, 0.04, 0.00, 0.02, 0.03): mean 0.022; squared deviations 4e-6 + 3.24e-4 + 4.84e-4 + 4e-6
    # + 6.4e-5 = 8.8e-4, sd = sqrt(8.8e-4 / 4) = 0.0148324; se = sd / sqrt(5) = 0.0066332;
    # t = 0.022 / se = 3.31662; t_{0.975, 4} = 2.776445 (tables), half-width 0.0184168; p (two-sided, df 4) = 0.02947.
    a = [0.82, 0.85, 0.80, 0.84, 0.83]
    b = [0.80, 0.81, 0.80, 0.82, 0.80]
    d = stats.paired_difference(a, b)
    assert d.n == 5 and d.mean == pytest.approx(0.022)
    assert d.sd == pytest.approx(math.sqrt(8.8e-4 / 4))
    assert d.t == pytest.approx(3.316625, rel=1e-6)
    assert d.ci_low == pytest.approx(0.022 - 2.776445 * 0.0066332, abs=1e-6)
    assert d.ci_high == pytest.approx(0.022 + 2.776445 * 0.0066332, abs=1e-6)
    assert d.p == pytest.approx(0.02947, abs=5e-5)
    assert d.excludes_zero()
    # Swapping the two sides flips the sign only.
    e = stats.paired_difference(b, a)
    assert (e.mean, e.ci_low, e.ci_high, e.p) == pytest.approx((-d.mean, -d.ci_high, -d.ci_low, d.p))


def test_student_t_quantiles_and_tails_match_tables() -> None:
    for df, q975 in ((1, 12.706205), (2, 4.302653), (4, 2.776445), (10, 2.228139), (30, 2.042272)):
        assert stats.t_quantile(0.975, df) == pytest.approx(q975, rel=1e-6)
        assert stats.t_sf_two_sided(q975, df) == pytest.approx(0.05, rel=1e-5)
    assert stats.t_sf_two_sided(0.0, 3) == pytest.approx(1.0)
    assert stats.t_sf_two_sided(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| >= 1) = 1/2
    assert stats.betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # I_x(1, 1) = x
    assert stats.betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # sum_{j>=2} C(4,j) .4^j .6^(4-j)


def test_paired_difference_edge_cases_and_bootstrap() -> None:
    one = stats.paired_difference([0.5], [0.4])
    assert one.n == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.ci_low) and math.isnan(one.p)
    same = stats.paired_difference([0.5, 0.6], [0.4, 0.5])  # every difference 0.1: no spread
    assert (same.ci_low, same.ci_high, same.p) == pytest.approx((0.1, 0.1, 0.0)) and same.t == math.inf
    nan = stats.paired_difference([0.5, float("nan"), 0.7], [0.4, 0.5, 0.5])  # the nan seed is left out
    assert nan.n == 2 and nan.mean == pytest.approx(0.15)
    lo, hi = stats.bootstrap_ci([0.82, 0.85, 0.80, 0.84, 0.83], [0.80, 0.81, 0.80, 0.82, 0.80])
    assert 0.0 <= lo < 0.022 < hi <= 0.04  # within the range of the per-seed differences
    with pytest.raises(ValueError, match="same length"):
        stats.paired_difference([0.1, 0.2], [0.1])


def test_paired_rows_pair_by_seed_against_each_baseline(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=("grpo-n8", "grpo-matched", "deep-grpo"), seeds=(0, 1, 2))

    def rec(strategy: str, seed: int, acc: float) -> dict[str, Any]:
        return {"strategy": strategy, "seed": seed, "final_accuracy": acc,
                "eval_curve": {"steps": [0, 2], "tokens": [0, 10], "accuracy": [0.5, acc]}}

    records = [rec("grpo-n8", s, a) for s, a in enumerate((0.50, 0.60, 0.70))]
    records += [rec("grpo-matched", s, a) for s, a in enumerate((0.55, 0.60, 0.80))]
    records += [rec("deep-grpo", s, a) for s, a in enumerate((0.60, 0.62, 0.74))]  # d vs n8 = .10, .02, .04
    rows = paired_rows(cfg, records, ("final_accuracy",))
    got = {(r["strategy"], r["baseline"]): r for r in rows}
    assert set(got) == {("grpo-matched", "grpo-n8"), ("deep-grpo", "grpo-n8"), ("deep-grpo", "grpo-matched"),
                        ("grpo-n8", "grpo-matched")}
    d = got[("deep-grpo", "grpo-n8")]
    assert d["mean"] == pytest.approx(0.16 / 3) and d["n"] == 3
    assert d["sd"] == pytest.approx(np.std([0.10, 0.02, 0.04], ddof=1))
    table = format_tables(summarize(cfg, records))
    assert "strategy − grpo-n8" in table and "strategy − grpo-matched" in table


# -- the ablations and the deviation options ------------------------------------------------------------
@pytest.mark.parametrize(("name", "values"), [
    ("deep-grpo-root-only", {"depth_bias_gamma": -20.0}),
    ("deep-grpo-gamma0", {"depth_bias_gamma": 0.0}),
    ("deep-grpo-gamma1", {"depth_bias_gamma": 1.0}),
    ("deep-grpo", {"depth_bias_gamma": 2.0, "local_loss_weight": 1.0, "pivots_per_trajectory": 1,
                   "branches_per_pivot": 8, "expand_all": False}),
    ("deep-grpo-gamma3", {"depth_bias_gamma": 3.0}),
    ("deep-grpo-lambda0.5", {"local_loss_weight": 0.5}),
    ("deep-grpo-lambda2", {"local_loss_weight": 2.0}),
    ("deep-grpo-p1b4", {"pivots_per_trajectory": 1, "branches_per_pivot": 4}),
    ("deep-grpo-p2b4", {"pivots_per_trajectory": 2, "branches_per_pivot": 4}),
    ("deep-grpo-expand-all", {"expand_all": True}),
    ("deep-grpo-paper", {"truncated_roots_fail": True, "sentence_split": "bare", "phi_min_per_class": 0,
                         "drop_zero_advantage": True}),
    ("grpo-paper", {"truncated_roots_fail": True, "drop_zero_advantage_roots": True}),
])
def test_ablation_strategies_set_the_papers_values(tmp_path: Path, name: str, values: dict[str, Any]) -> None:
    c = run_config(small(tmp_path, strategies=(name,)), name, 0)
    assert {k: getattr(c, k) for k in values} == values
    if STRATEGIES[name].algo == "deep-grpo":
        assert isinstance(c, DeepGRPOConfig)
        untouched = {"depth_bias_gamma": 2.0, "local_loss_weight": 1.0, "pivots_per_trajectory": 1,
                     "branches_per_pivot": 8, "expand_all": False}
        for k, v in untouched.items():  # each ablation changes only its own value
            assert getattr(c, k) == values.get(k, v)


def test_sentence_split_bare_ends_segments_only_at_the_bare_dot_token() -> None:
    vocab = ["3", ".", "50", ".5", " .", "\n"]

    def decode(ids: list[int]) -> str:
        return "".join(vocab[i] for i in ids)

    assert boundary_table(decode, 6, "sentence").tolist() == [False, True, False, True, True, False]
    assert boundary_table(decode, 6, "sentence", bare=True).tolist() == [False, True, False, False, False, False]


def test_truncated_roots_fail_scores_truncated_rows_zero() -> None:
    batch = fake_branches([1.0, 1.0, 0.0, 1.0], k=4, truncated=[True, False, True, False])
    out = fail_truncated(batch)
    assert out.rewards.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert out.correct.tolist() == [False, True, False, True]
    assert batch.rewards.tolist() == [1.0, 1.0, 0.0, 1.0]  # the input is left as it was
    # GRPO group advantages then follow the new rewards: mean 1/2 -> (-1/2, 1/2, -1/2, 1/2).


def _loss(drop: bool) -> float:
    # Three rows, ratio 1 (one epoch): per-token loss = -A. Advantages (1, 0, -1), 2 / 3 / 1 target tokens.
    samples = TrainSamples([np.array([1, 2])] * 3, [np.array([3, 4]), np.array([5, 6, 7]), np.array([8])],
                           np.array([1.0, 0.0, -1.0], np.float32), np.zeros(3, np.int64))
    if drop:  # what drop_zero_advantage does before the update (trainer.compute_advantages)
        samples = samples.select(np.abs(samples.advantages) >= 1e-8)
    model = tiny_model(16)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    metrics = policy_update(model, opt, sched, samples, UpdateSettings(micro_batch_size=8), stream_weights={0: 1.0},
                            device=torch.device("cpu"))
    return metrics["loss/stream_0"]


def test_drop_zero_advantage_removes_those_rows_from_the_token_mean_denominator() -> None:
    # Numerator: -(1 * 2) - (0 * 3) - (-1 * 1) = -1. Kept: 6 tokens -> -1/6; dropped: 3 tokens -> -1/3.
    assert _loss(drop=False) == pytest.approx(-1 / 6, abs=1e-6)
    assert _loss(drop=True) == pytest.approx(-1 / 3, abs=1e-6)


def test_phi_min_per_class_sets_when_p_phi_is_first_fitted() -> None:
    eager, late = Recoverability(min_per_class=0), Recoverability(min_per_class=10)
    for phi in (eager, late):
        phi.add([0.2, 0.8], [True, False])  # one pivot of each class
    assert eager.fitted and not late.fitted
    assert eager(np.array([0.2]))[0] > eager(np.array([0.8]))[0]  # shallow succeeded, deep failed
    np.testing.assert_array_equal(late(np.array([0.2, 0.8])), [1.0, 1.0])  # P_phi = 1 until fitted
    late.add([0.2] * 10 + [0.8] * 10, [True] * 10 + [False] * 10)  # 11 of each: > 10
    assert late.fitted



def test_the_authors_fit_trigger_needs_more_than_ten_pivots_with_both_classes() -> None:
    # befocuss/Deep-GRPO, UtilitySamplingStrategy.select_node: len(buffer) > 10 and both 0 and 1 present.
    phi = Recoverability(min_per_class=0, min_total=10)
    phi.add([0.2] + [0.8] * 9, [True] + [False] * 9)  # 10 pivots, both classes: not yet
    assert not phi.fitted
    phi.add([0.8], [False])  # 11
    assert phi.fitted
    only_failures = Recoverability(min_per_class=0, min_total=10)
    only_failures.add([0.5] * 20, [False] * 20)
    assert not only_failures.fitted

def test_depth_histogram_separates_root_pivots_and_bins_r_right_closed() -> None:
    # T = 5 candidates r = 1/5 (root), 2/5, 3/5, 4/5. np.histogram(bins=5)'s half-open bins put 2/5 and 3/5
    # into the same bin [0.4, 0.6) (3/5 rounds below 0.6 there), 4/5 into [0.8, 1.0], and the root into
    # [0.2, 0.4) with the deeper pivots.
    ratios = np.array([1, 2, 3, 4]) / 5
    assert np.histogram(ratios, bins=5, range=(0.0, 1.0))[0].tolist() == [0, 1, 2, 0, 1]  # the old bins
    np.testing.assert_array_equal(depth_histogram([0, 3, 6, 9], ratios), [1, 0, 1, 1, 1, 0])
    # Root pivots count as root whatever T is: r = 1/2 (a one-segment response) and r = 1/10.
    np.testing.assert_array_equal(depth_histogram([0, 0, 4], np.array([0.5, 0.1, 0.2])), [2, 1, 0, 0, 0, 0])


# -- the learning-rate sweep ------------------------------------------------------------------------------
def test_sweep_runs_evaluate_on_validation_problems_disjoint_from_test_and_training(tmp_path: Path) -> None:
    from deepgrpo_agent.env_pool import EnvPool

    cfg = small(tmp_path, lr_sweep=(1e-3, 3e-3))
    sweep = run_config(cfg, "grpo", 100, learning_rate=1e-3, sweep=True)
    test = run_config(cfg, "grpo", 0)
    assert (sweep.learning_rate, sweep.eval_split, test.eval_split) == (1e-3, "validation", "test")
    assert "lr_sweep" in sweep.output_dir
    pools = [EnvPool(c, roots=1) for c in (sweep, test)]
    try:
        val, tst = pools[0].eval_indices, pools[1].eval_indices
        assert len(val) == len(tst) == 8 and not set(val) & set(tst)
        # Sweep runs train below both held-out slices; test runs below the test slice.
        assert pools[0].train_range[0] == 0 and pools[0].train_range[1] <= min(val.min(), tst.min())
        assert pools[1].train_range[1] <= tst.min()
    finally:
        for pool in pools:
            pool.close()
    chosen = with_swept_rates(cfg, {"grpo": 3e-3})
    assert run_config(chosen, "grpo", 0).learning_rate == 3e-3
    assert run_config(chosen, "deep-grpo", 0).learning_rate == cfg.train["learning_rate"]


def test_a_linked_run_directory_of_the_same_config_is_read_back(tmp_path: Path) -> None:
    cfg = small(tmp_path)
    config = run_config(cfg, "grpo", 0)
    out = Path(config.output_dir)
    out.mkdir(parents=True)
    from deepgrpo_agent.compare import _fingerprint  # the marker a real run writes
    from deepgrpo_agent.config import to_dict

    (out / "run_config.json").write_text(json.dumps({"fingerprint": _fingerprint(config), "config": to_dict(config)}))
    (out / "result.json").write_text(json.dumps({"strategy": "grpo", "seed": 0}))
    other = small(tmp_path, output_dir=str(tmp_path / "other"))
    link = Path(run_config(other, "grpo", 0).output_dir)
    link.parent.mkdir(parents=True)
    link.symlink_to(out, target_is_directory=True)
    assert stored_record(run_config(other, "grpo", 0)) == {"strategy": "grpo", "seed": 0}
    different = small(tmp_path, output_dir=str(tmp_path / "other"), steps=3)
    with pytest.raises(ValueError, match="different configuration"):
        stored_record(run_config(different, "grpo", 0))
