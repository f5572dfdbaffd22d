"""The comparison runner: equal budgets, tables, plots, resume and config errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepgrpo_agent import compare
from deepgrpo_agent.compare import (
    STRATEGIES,
    CompareConfig,
    accuracy_at,
    run_comparison,
    run_config,
    summarize,
)
from deepgrpo_agent.trainer import GRPOTrainer

TINY_ENV = {"level": 1, "max_operand": 2, "max_response_tokens": 3}


def small(tmp_path: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = dict(
        strategies=("grpo", "deep-grpo"), seeds=(0, 1), token_budget=1200, num_evals=2, model="random-tiny",
        env_kwargs=TINY_ENV, train={"prompts_per_step": 4, "group_size": 4, "learning_rate": 3e-3,
                                    "device": "cpu", "micro_batch_size": 64, "segment": "line"},
        eval_problems=16, save_every=2, output_dir=str(tmp_path / "cmp"), plots=False,
    )
    fields.update(overrides)
    return CompareConfig(**fields)


def test_every_strategy_gets_the_same_budget_env_model_and_evaluation(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=tuple(STRATEGIES))
    configs = {name: run_config(cfg, name, seed=3) for name in STRATEGIES}
    for name, c in configs.items():
        assert (c.max_generated_tokens, c.env_id, c.env_kwargs, c.model, c.seed) == (1200, "Arithmetic-v0",
                                                                                      TINY_ENV, "random-tiny", 3)
        assert (c.eval_every, c.eval_every_tokens, c.eval_problems, c.resume) == (0, 600, 16, True)
        assert c.output_dir.endswith(f"{name}/seed3")
        for key, value in STRATEGIES[name].overrides.items():
            assert getattr(c, key) == value
    # GRPO-N is configuration, not code: the same trainer with group_size = N.
    assert [configs[f"grpo-n{n}"].group_size for n in (8, 16, 32, 64)] == [8, 16, 32, 64]
    assert configs["uniform-tree"].fork_selection == "uniform"
    assert configs["treerl"].fork_selection == "entropy"


def test_strategy_fields_in_train_reach_only_the_strategies_that_have_them(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=("grpo", "deep-grpo", "treerl"))
    assert run_config(cfg, "deep-grpo", 0).segment == "line"
    assert not hasattr(run_config(cfg, "grpo", 0), "segment")
    assert not hasattr(run_config(cfg, "treerl", 0), "segment")
    small(tmp_path, strategies=("grpo",))  # a DEEP-GRPO field with no DEEP-GRPO strategy is unused, not an error
    with pytest.raises(ValueError, match=r"`train` sets \['segmnet'\], a field of no strategy"):
        small(tmp_path, train={"segmnet": "line"})


def test_testbed_defaults_fit_arithmetic(tmp_path: Path) -> None:
    cfg = CompareConfig(output_dir=str(tmp_path))
    deep, tree = run_config(cfg, "deep-grpo", 0), run_config(cfg, "treerl", 0)
    assert (deep.model, deep.env_id, deep.max_new_tokens, deep.segment) == ("arithmetic-testbed", "Arithmetic-v0",
                                                                             80, "line")
    assert (tree.stop_words, tree.skip_last_tokens, cfg.pass_k) == (("A:",), 2, 4)


def test_strategy_overrides_win_over_shared_values(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategy_overrides={"deep-grpo": {"branches_per_pivot": 4, "learning_rate": 1e-3}})
    assert run_config(cfg, "deep-grpo", 0).branches_per_pivot == 4
    assert run_config(cfg, "deep-grpo", 0).learning_rate == 1e-3
    assert run_config(cfg, "grpo", 0).learning_rate == 3e-3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strategies": ("grpo", "deep_grpo")}, "Unknown strategies"),
        ({"seeds": ()}, "distinct seeds"),
        ({"token_budget": 0}, "token_budget"),
        ({"strategy_overrides": {"treerl": {"tree_chains": 4}}}, "not in `strategies`"),
    ],
)
def test_bad_configs_say_what_to_fix(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        small(tmp_path, **overrides)


def test_unknown_config_field_names_the_strategy(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategy_overrides={"grpo": {"pivots_per_trajectory": 2}})
    with pytest.raises(ValueError, match="pivots_per_trajectory"):
        run_config(cfg, "grpo", 0)


def test_summary_statistics_and_curve_interpolation(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=("grpo",), seeds=(0, 1, 2), token_budget=100, num_evals=2)
    records = [
        {"strategy": "grpo", "initial_accuracy": 0.1, "final_accuracy": f, "best_accuracy": f,
         "generated_tokens": 110, "branch_rollouts": 0, "trained_tokens": 5, "steps": 3, "train_wall_s": 1.0,
         "eval_curve": {"tokens": [0, 55, 110], "accuracy": [0.1, 0.3, f]}}
        for f in (0.2, 0.4, 0.6)
    ]
    row = summarize(cfg, records)["strategies"][0]
    assert row["final_accuracy_mean"] == pytest.approx(0.4)
    assert row["final_accuracy_std"] == pytest.approx(0.2)  # sample std of 0.2, 0.4, 0.6
    # At 50 tokens: 0.1 + (0.3 - 0.1) * 50/55; at 100: 0.3 + (f - 0.3) * 45/55.
    assert accuracy_at(records[0], np.array([50.0]))[0] == pytest.approx(0.1 + 0.2 * 50 / 55)
    expected = np.mean([0.3 + (f - 0.3) * 45 / 55 for f in (0.2, 0.4, 0.6)])
    assert row["accuracy_curve_mean"][2] == pytest.approx(expected)


def _tokens_per_step(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x["budget/generated_tokens"] for x in lines if x["kind"] == "train"]


def test_end_to_end_equal_budget_tables_plots_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    cfg = small(tmp_path, plots=True)
    summary = run_comparison(cfg)
    out = Path(cfg.output_dir)
    for name in ("runs.csv", "results.csv", "results.json", "comparison.png", "accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 4
    for run in runs:
        # Equal budget: each run stops at the first step that reaches the budget, never later.
        tokens = _tokens_per_step(out / run["strategy"] / f"seed{run['seed']}")
        assert tokens[-1] == int(run["generated_tokens"]) >= cfg.token_budget
        assert len(tokens) == 1 or tokens[-2] < cfg.token_budget
    assert [r["strategy"] for r in summary["strategies"]] == ["grpo", "deep-grpo"]
    assert all(r["seeds"] == 2 for r in summary["strategies"])
    assert json.loads((out / "results.json").read_text())["token_budget"] == 1200

    # A second call reads finished runs back instead of training them again.
    monkeypatch.setattr(GRPOTrainer, "train_step", lambda self: pytest.fail("a finished run was retrained"))
    again = run_comparison(cfg)
    assert again["strategies"] == summary["strategies"]


def test_cli_compare_on_the_shipped_testbed_every_default_strategy(tmp_path: Path) -> None:
    """The README's comparison command, shortened: the testbed policy, all six default strategies, CSV/JSON/PNG."""
    pytest.importorskip("matplotlib")
    from deepgrpo_agent.cli import main

    out = tmp_path / "cmp"
    assert main(["compare", "--seeds", "0", "--token-budget", "4000", "--num-evals", "1", "--eval-problems", "32",
                 "--pass-k", "2", "--output-dir", str(out)]) == 0
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["strategy"] for r in runs] == ["grpo-n8", "grpo-matched", "deep-grpo", "erpo", "treerl", "uniform-tree"]
    for r in runs:
        metrics = [json.loads(x) for x in (out / r["strategy"] / "seed0" / "metrics.jsonl").read_text().splitlines()]
        per_step = np.diff([0.0] + [m["budget/generated_tokens"] for m in metrics if m["kind"] == "train"])
        # Equal budget: every run stops at the first step end past 4000 tokens, never a step later.
        assert 4000 <= int(r["generated_tokens"]) < 4000 + per_step[-1] + 1e-9
        assert 0.0 <= float(r["final_sample_accuracy"]) <= 1.0 and 0.0 <= float(r["final_accuracy"]) <= 1.0
        assert float(r["initial_accuracy"]) > 0.5  # the testbed policy, not a random init, started every run
    branched = {r["strategy"]: int(r["branch_rollouts"]) for r in runs}
    assert branched["grpo-n8"] == branched["grpo-matched"] == branched["erpo"] == 0
    assert {r["strategy"]: int(r["group_size"]) for r in runs}["grpo-matched"] == 32
    assert min(branched["deep-grpo"], branched["treerl"], branched["uniform-tree"]) > 0
    summary = json.loads((out / "results.json").read_text())
    assert summary["config"]["model"] == "arithmetic-testbed" and len(summary["runs"]) == 6
    assert (out / "comparison.png").stat().st_size > 10_000 and (out / "accuracy.png").is_file()
    assert (out / "seeds.png").is_file() and (out / "tables.md").is_file()


class _Cut(Exception):
    pass


def test_a_cut_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = compare.run_one(small(tmp_path / "a", strategies=("deep-grpo",), seeds=(0,), token_budget=4000),
                            "deep-grpo", 0)
    cfg = small(tmp_path / "b", strategies=("deep-grpo",), seeds=(0,), token_budget=4000)
    original = GRPOTrainer.train_step

    def cut_after_three(self: GRPOTrainer) -> dict[str, float]:
        if self.step == 3:
            raise _Cut
        return original(self)

    monkeypatch.setattr(GRPOTrainer, "train_step", cut_after_three)
    with pytest.raises(_Cut):
        compare.run_one(cfg, "deep-grpo", 0)
    monkeypatch.setattr(GRPOTrainer, "train_step", original)
    resumed = compare.run_one(cfg, "deep-grpo", 0)  # continues from the step-2 checkpoint
    assert whole["steps"] > 3
    for key in ("generated_tokens", "branch_rollouts", "steps", "eval_curve", "final_accuracy"):
        assert resumed[key] == whole[key], key


def test_a_run_directory_of_another_config_is_refused(tmp_path: Path) -> None:
    cfg = small(tmp_path, strategies=("grpo",), seeds=(0,), token_budget=300)
    compare.run_one(cfg, "grpo", 0)
    other = small(tmp_path, strategies=("grpo",), seeds=(0,), token_budget=600)
    with pytest.raises(ValueError, match="different configuration"):
        compare.run_one(other, "grpo", 0)


@pytest.mark.parametrize("n", [8, 16, 32, 64])
def test_grpo_n_yaml_configs(n: int) -> None:
    from deepgrpo_agent.config import GRPOConfig
    from deepgrpo_agent.config_cli import parse_config

    path = Path(__file__).parents[2] / "examples" / "configs" / f"grpo_n{n}.yaml"
    assert parse_config(GRPOConfig, ["--config", str(path)]).group_size == n


def test_report_only_without_finished_runs_says_what_to_do(tmp_path):
    from deepgrpo_agent.compare import CompareConfig, run_comparison

    cfg = CompareConfig(strategies=("grpo-n8",), seeds=(0,), report_only=True, output_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="found none; run it without report_only"):
        run_comparison(cfg)
