"""Every algorithm, the comparison runner and ``eval`` with ``engine="vllm"`` (vLLM for real, the shipped
testbed policy on Arithmetic-v0): after each weight sync the engine's sampled log-probs match the
trained model's forward on every row it generates, and a seed reproduces a run.

Marked ``vllm``; skipped with a reason when vLLM is not importable (CI installs it: scripts/test.sh).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepgrpo_agent import compare
from deepgrpo_agent.algorithms import get_algorithm
from deepgrpo_agent.compare import STRATEGIES, CompareConfig, run_comparison, run_config
from deepgrpo_agent.engine.vllm import VLLMEngine, vllm_available
from tests.agent.test_vllm import LOGPROB_ATOL, reference_logprobs

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM is not installed (bash scripts/setup.sh --vllm)"),
]

SMALL = {"prompts_per_step": 2, "group_size": 4, "learning_rate": 3e-3, "micro_batch_size": 64,
         "vllm_kv_cache_gb": 0.25}


def small_config(tmp_path: Path, strategy: str, **train: Any) -> Any:
    """The comparison's config of ``strategy`` on the testbed, small, with the vLLM engine."""
    cfg = CompareConfig(strategies=(strategy,), seeds=(0,), token_budget=10**9, eval_problems=8, pass_k=2,
                        engine="vllm", train={**compare.testbed_train(), **SMALL, **train}, output_dir=str(tmp_path),
                        plots=False, save_every=0)
    return dataclasses.replace(run_config(cfg, strategy, 0), resume=False, eval_every_tokens=0)


class LogprobCheck:
    """Wraps the trainer's real engine: each completion's log-probs are compared, right when they are
    generated, with the trained model's own forward pass at the row's temperature."""

    def __init__(self, trainer: Any) -> None:
        self.trainer, self.engine = trainer, trainer.engine
        self.errors: list[float] = []
        self.temperatures: list[float] = []
        self._generate = trainer.engine.generate
        trainer.engine.generate = self.generate

    def generate(self, sequences: Any, params: Any, *, repeat: int = 1, temperatures: Any = None, **kw: Any) -> Any:
        out = self._generate(sequences, params, repeat=repeat, temperatures=temperatures, **kw)
        temps = np.full(len(out), params.temperature) if temperatures is None else np.asarray(temperatures)
        self.temperatures += temps.tolist()
        model, vocab = self.trainer.model, self.engine.vocab_size
        for j, c in enumerate(out):
            if len(c.token_ids):
                ref = reference_logprobs(model, np.asarray(sequences[j // repeat]), c.token_ids, float(temps[j]), vocab)
                self.errors.append(float(np.abs(ref - c.logprobs).max()))
        return out


ALGORITHMS = {
    "grpo": {},
    "deep-grpo": {"branches_per_pivot": 4},
    "erpo": {"train_problems": 2},  # every step revisits both prompts: all-correct ones get hotter
    "treerl": {"tree_chains": 3},
    "uniform-tree": {"tree_chains": 3},
    "attnrl": {"tree_chains": 3, "fci_delta": 1, "fork_min_distance": 0},
}


@pytest.mark.parametrize("strategy", list(ALGORITHMS))
def test_every_algorithm_trains_with_vllm_and_its_rows_match_the_trained_model(tmp_path, strategy):
    config = dataclasses.replace(small_config(tmp_path, strategy, **ALGORITHMS[strategy]), total_steps=3)
    _, trainer_cls = get_algorithm(STRATEGIES[strategy].algo)
    trainer = trainer_cls(config)
    assert isinstance(trainer.engine, VLLMEngine)
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)  # train() would; the steps are run by hand here
    check = LogprobCheck(trainer)
    start = [p.detach().clone() for p in trainer.model.parameters()]
    for _ in range(config.total_steps):
        metrics = trainer.train_step()
        assert np.isfinite(metrics["loss/total"])
    changed = [not torch.equal(a, b) for a, b in zip(start, trainer.model.parameters())]
    assert all(changed), "every parameter should have moved (so the weight sync is what the check tests)"
    evaluation = trainer.evaluate()
    assert 0.0 <= evaluation["eval/accuracy"] <= 1.0
    assert len(check.errors) >= config.total_steps * config.prompts_per_step * config.group_size
    assert max(check.errors) <= LOGPROB_ATOL, f"worst log-prob error {max(check.errors):.2e}"
    if strategy == "erpo":
        assert max(check.temperatures) > config.temperature  # per-row temperatures reached the engine
    trainer.engine.close()


def _step_metrics(path: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # nan (rollout/entropy: vLLM returns no entropies) as a string, so that equal runs compare equal
    return [{k: ("nan" if v != v else v) for k, v in r.items()
             if not k.startswith("perf/") and k != "time" and isinstance(v, float)} for r in rows]


def test_a_seed_reproduces_a_vllm_run(tmp_path):
    _, trainer_cls = get_algorithm("deep-grpo")
    runs = []
    for name in ("a", "b"):
        config = dataclasses.replace(small_config(tmp_path / name, "deep-grpo", branches_per_pivot=4),
                                     total_steps=2, output_dir=str(tmp_path / name / "run"))
        trainer = trainer_cls(config)
        trainer.train()
        trainer.engine.close()
        runs.append(_step_metrics(Path(config.output_dir) / "metrics.jsonl"))
    assert runs[0] == runs[1] and len(runs[0]) >= 2


def test_compare_runs_with_the_vllm_engine(tmp_path):
    cfg = CompareConfig(strategies=("grpo", "treerl"), seeds=(0,), token_budget=1500, num_evals=1, eval_problems=8,
                        pass_k=0, engine="vllm", train={**compare.testbed_train(), **SMALL, "tree_chains": 3},
                        output_dir=str(tmp_path), plots=False, save_every=0)
    summary = run_comparison(cfg)
    stored = json.loads((tmp_path / "grpo" / "seed0" / "run_config.json").read_text())
    assert stored["config"]["engine"] == "vllm"
    assert summary is not None and (tmp_path / "grpo" / "seed0" / "result.json").is_file()


def test_eval_cli_with_the_vllm_engine(tmp_path, capsys):
    from deepgrpo_agent.cli import main

    assert main(["eval", "--env-id", "Arithmetic-v0", "--model", "arithmetic-testbed", "--engine", "vllm",
                 "--vllm-kv-cache-gb", "0.25", "--eval-problems", "8", "--pass-k", "2",
                 "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads(out[out.index("{"):])
    assert metrics["eval/problems"] == 8.0 and 0.0 <= metrics["eval/accuracy"] <= 1.0
