"""The Ray tier: compare --ray against the local runner, and rollout workers (N = 1 is exact, N = 2
repeats itself, a killed worker loses nothing), on a local 2-CPU cluster.

Skipped when Ray is not installed (``pip install -e .[ray]``; scripts/setup.sh installs it for CI).
"""

from __future__ import annotations

import csv
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from deepgrpo_agent import compare
from deepgrpo_agent.cli import main
from deepgrpo_agent.deep_grpo import DeepGRPOConfig, DeepGRPOTrainer
from deepgrpo_agent.ray_runner import connect
from deepgrpo_agent.rollout_workers import RolloutWorkerPool
from deepgrpo_agent.testbed import TESTBED_ENV_KWARGS

ray = pytest.importorskip("ray", reason="the Ray tier needs Ray: pip install -e '.[ray]'")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One local cluster with 2 CPUs for the whole module (starting one takes ~5-10 s)."""
    if ray.is_initialized():
        ray.shutdown()
    yield connect(None, num_cpus=2)
    ray.shutdown()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Learner and workers both run torch on 1 thread, so that their float sums agree to the bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- compare --ray ------------------------------------------------------------------------------------
COMPARE = ["compare", "--strategies", "grpo", "deep-grpo", "--seeds", "0", "1", "--token-budget", "1500",
           "--num-evals", "1", "--eval-problems", "32", "--pass-k", "0", "--no-plots"]
WALL = ("train_wall_s", "train_wall_s_mean", "train_wall_s_std")  # timings: the only columns allowed to differ


def _table(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in WALL} for row in csv.DictReader(path.open())]


def test_compare_on_ray_gives_the_local_tables_and_reads_finished_runs_back(
    cluster: Any, one_thread: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(COMPARE + ["--output-dir", str(local)]) == 0
    # Half the sweep first (a cut sweep), then the whole: the finished half is read back, not rerun.
    assert main(["compare", *COMPARE[1:4], "--seeds", "0", *COMPARE[7:], "--output-dir", str(remote), "--ray"]) == 0
    capsys.readouterr()
    assert main(COMPARE + ["--output-dir", str(remote), "--ray"]) == 0
    out = capsys.readouterr().out
    assert "4 runs (2 strategies x 2 seeds), 2 finished earlier and read back; running 2 on Ray (local)" in out
    assert "[4/4]" in out
    for name in ("results.csv", "runs.csv"):
        assert _table(remote / name) == _table(local / name), name
    rows = _table(remote / "runs.csv")
    assert [(r["strategy"], r["seed"]) for r in rows] == [("grpo", "0"), ("deep-grpo", "0"), ("grpo", "1"),
                                                         ("deep-grpo", "1")]
    assert all(int(r["generated_tokens"]) >= 1500 for r in rows)


def test_compare_ray_bad_address_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="Expected a Ray address"):
        main(COMPARE + ["--output-dir", str(tmp_path), "--ray", "nowhere"])


# -- rollout workers ----------------------------------------------------------------------------------
def _deep_grpo(tmp_path: Path, name: str, workers: int) -> DeepGRPOTrainer:
    """DEEP-GRPO on the testbed: roots and branches, 4 prompts x 4 roots, so that both stages shard."""
    shared = {k: v for k, v in compare.testbed_train().items() if k not in ("stop_words", "skip_last_tokens")}
    shared.update(prompts_per_step=4, group_size=4)
    cfg = DeepGRPOConfig(env_id="Arithmetic-v0", env_kwargs=dict(TESTBED_ENV_KWARGS), model="arithmetic-testbed",
                         device="cpu", total_steps=2, eval_every=0, pass_k=0, save_every=0, tensorboard=False,
                         progress=False, output_dir=str(tmp_path / name), rollout_workers=workers, **shared)
    return DeepGRPOTrainer(cfg)


def _train(trainer: DeepGRPOTrainer) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    metrics = []
    try:
        while not trainer.finished:
            metrics.append(trainer.train_step())
    finally:
        trainer.close_workers()
    return metrics, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _same_run(a: tuple[list[dict[str, float]], dict[str, torch.Tensor]],
              b: tuple[list[dict[str, float]], dict[str, torch.Tensor]]) -> None:
    (ma, wa), (mb, wb) = a, b
    assert len(ma) == len(mb) == 2
    for x, y in zip(ma, mb):
        for key in ("rollout/reward_mean", "rollout/generated_tokens", "pivot/count", "pivot/branch_generated_tokens",
                    "budget/generated_tokens", "budget/branch_rollouts", "train/loss"):
            assert x.get(key) == y.get(key), key
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_one_worker_through_ray_is_the_run_without_ray(cluster: Any, one_thread: None, tmp_path: Path) -> None:
    alone = _train(_deep_grpo(tmp_path, "local", 0))
    trainer = _deep_grpo(tmp_path, "ray", 1)
    run = _train(trainer)
    _same_run(alone, run)
    assert all(m["ray/worker_collect_s"] > 0 and m["ray/overhead_s"] >= 0 for m in run[0])
    assert trainer.budget.branch_rollouts > 0  # branches travelled too (reset_to states as plain data)


def test_two_workers_repeat_themselves_and_a_killed_worker_loses_nothing(
    cluster: Any, one_thread: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _train(_deep_grpo(tmp_path, "a", 2))

    submit = RolloutWorkerPool._submit
    calls = {"n": 0}
    killed: list[int] = []

    def submit_then_kill(self: RolloutWorkerPool, w: int, request: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 6 and w == 1:  # step 2's roots, worker 1: killed with its share in flight
            pid = int(ray.get(self.workers[w].pid.remote()))
            ref = submit(self, w, request)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return ref
        return submit(self, w, request)

    monkeypatch.setattr(RolloutWorkerPool, "_submit", submit_then_kill)
    trainer = _deep_grpo(tmp_path, "b", 2)
    with pytest.warns(RuntimeWarning, match="Rollout worker 1 failed"):
        second = _train(trainer)
    assert killed, "the test never killed a worker"
    assert sum(m.get("ray/worker_restarts", 0.0) for m in second[0]) == 1.0
    _same_run(first, second)  # the re-collected share is the one the dead worker would have sent
