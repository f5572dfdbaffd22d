"""``deepgrpo eval`` evaluates without a trainer, and gives what the trainer's evaluation gives."""

from __future__ import annotations

import json

from deepgrpo_agent.cli import main
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.evaluation import evaluate_config
from deepgrpo_agent.trainer import GRPOTrainer

ARGS = dict(env_id="Arithmetic-v0", env_kwargs={"level": 1, "max_operand": 3}, model="random-tiny", device="cpu",
            max_new_tokens=12, eval_problems=6, pass_k=2, tensorboard=False, progress=False)


def test_evaluate_config_equals_the_trainers_evaluation(tmp_path):
    config = GRPOConfig(**ARGS, output_dir=str(tmp_path / "run"))
    alone = evaluate_config(config)
    assert not (tmp_path / "run").exists()  # evaluate_config wrote nothing: no trainer, no logger
    (tmp_path / "run").mkdir()  # the trainer's JSONL logger writes there (train() would create it)
    with_trainer = GRPOTrainer(config).evaluate(0)
    assert alone == {k: v for k, v in with_trainer.items() if not k.startswith("budget/")}


def test_cli_eval_prints_the_metrics(tmp_path, capsys):
    argv = ["eval", "--env-id", "Arithmetic-v0", "--env-kwargs", '{"level": 1, "max_operand": 3}', "--model",
            "random-tiny", "--device", "cpu", "--max-new-tokens", "12", "--eval-problems", "4", "--pass-k", "0",
            "--output-dir", str(tmp_path / "eval")]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eval/problems"] == 4.0 and 0.0 <= metrics["eval/accuracy"] <= 1.0
    assert not (tmp_path / "eval").exists()
