"""Smoke runs of the examples at tiny budgets: they run end to end and write what they promise."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_ppo_example_writes_its_learning_curve(tmp_path):
    out = tmp_path / "curve.csv"
    run_example("sb3_ppo_arithmetic.py", "--timesteps", "2048", "--log-every", "1024", "--eval-episodes", "5",
                "--curve-out", str(out))
    rows = list(csv.DictReader(out.open()))
    assert [int(r["timesteps"]) for r in rows] == [1024, 2048]
    assert all(0.0 <= float(r["success"]) <= 1.0 for r in rows)


def test_ppo_vs_grpo_curves_share_the_token_budget(tmp_path):
    plot = tmp_path / "plot.png"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None  # a dev extra, not a dependency
    budget, every = 2048, 1024
    stdout = run_example("ppo_vs_grpo_arithmetic.py", "--tokens", str(budget), "--eval-every", str(every),
                         "--seeds", "0", "1", "--eval-problems", "16", "--out", str(tmp_path),
                         *(["--plot", str(plot)] if has_matplotlib else ["--no-plot"]))
    assert "PPO (SB3)" in stdout and "GRPO (deepgrpo)" in stdout  # the printed table
    rows = list(csv.DictReader((tmp_path / "curves.csv").open()))
    for algo in ("ppo", "grpo"):
        for seed in (0, 1):
            curve = [r for r in rows if r["algo"] == algo and int(r["seed"]) == seed]
            assert [int(r["tokens"]) for r in curve] == [0, every, budget]  # the same marks for both
            generated = [int(r["generated_tokens"]) for r in curve]
            assert generated[0] == 0 and budget <= generated[-1] < budget + 1024  # equal budget, up to a rollout
            assert all(0.0 <= float(r["success"]) <= 1.0 for r in curve)
    summary = json.loads((tmp_path / "curves.json").read_text())["summary"]
    assert set(summary) == {"ppo", "grpo"}
    assert all(0.0 <= v <= 1.0 for algo in summary.values() for v in algo["mean"])
    assert plot.is_file() == has_matplotlib


def test_compare_strategies_example_quick(tmp_path):
    out = tmp_path / "cmp"
    stdout = run_example("compare_strategies.py", "--quick", "--strategies", "grpo", "deep-grpo", "--seeds", "0",
                         "--token-budget", "2000", "--output-dir", str(out))
    assert "| grpo | 1 |" in stdout and "| deep-grpo | 1 |" in stdout  # the printed table
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["strategy"] for r in runs] == ["grpo", "deep-grpo"]
    assert all(int(r["generated_tokens"]) >= 2000 for r in runs)


def test_custom_reward_wrapper_example_trains_both_on_the_wrappers_rewards():
    stdout = run_example("custom_reward_wrapper.py", "--steps", "1")
    for name in ("GRPO", "DEEP-GRPO"):
        assert f"{name}: first rollouts' rewards [0.0, 0.5, 1.0]" in stdout  # 0.5 exists only in the wrapper
        assert f"{name}: mean reward of the first 1 steps" in stdout
