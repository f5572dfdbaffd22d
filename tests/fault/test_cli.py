"""Fault tier: every user error at the CLI is one line, ``deepgrpo: error: ...``, with no traceback
unless ``--debug``; fuzzed command lines never escape as anything else."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepgrpo_agent import cli
from deepgrpo_agent.config import GRPOConfig
from deepgrpo_agent.config_cli import parse_config

pytestmark = pytest.mark.fault

FAST = ["--total-steps", "1", "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "4",
        "--eval-every", "0", "--save-every", "0", "--eval-problems", "2", "--no-tensorboard", "--no-progress"]


def run_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = int(e.code) if isinstance(e.code, int) else 2
    return code, err.getvalue()


def assert_one_line(text: str, *needles: str) -> None:
    assert "Traceback" not in text
    # Only the error line (progress bars of model loading aside, which are not errors).
    lines = [line for line in text.strip().splitlines() if "Loading weights" not in line]
    assert len(lines) == 1 and lines[0].startswith("deepgrpo: error: "), text
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


CASES = [
    ("unknown env id", ["train", "--env-id", "MathReasoning-v9", "--model", "random-tiny"], ["Did you mean 'MathReasoning-v0'"]),
    ("not a deepgrpo env", ["train", "--env-id", "CartPole-v1", "--model", "random-tiny"], ["expected a deepgrpo env id", "Arithmetic-v0"]),
    ("missing model path", ["train", "--env-id", "Arithmetic-v0", "--model", "/nonexistent/model"], ["'/nonexistent/model'"]),
    ("testbed on SVAMP", ["train", "--env-id", "MathReasoning-SVAMP-v0", "--model", "arithmetic-testbed"], ["train it on env_id='Arithmetic-v0'"]),
    ("cuda without CUDA", ["train", "--env-id", "Arithmetic-v0", "--model", "random-tiny", "--device", "cuda:7"], ["cuda"]),
    ("bad verifier name", ["train", "--env-id", "Arithmetic-v0", "--model", "random-tiny", "--env-kwargs", '{"verifier": "mathh"}'], ["'mathh'"]),
    ("misspelt env kwarg", ["train", "--env-id", "Arithmetic-v0", "--model", "random-tiny", "--env-kwargs", '{"levl": 2}'], ["Did you mean 'level'"]),
    ("unwritable output dir", ["train", "--env-id", "Arithmetic-v0", "--model", "random-tiny", "--output-dir", "/etc/passwd/x"], ["/etc/passwd is a file"]),
    ("eval with a missing model", ["eval", "--env-id", "Arithmetic-v0", "--model", "/nonexistent/model"], ["'/nonexistent/model'"]),
    ("missing problems file", ["train", "--env-id", "MathReasoning-v0", "--model", "random-tiny", "--env-kwargs", '{"problems": "nope.jsonl"}'], ["nope.jsonl"]),
    ("unknown dataset", ["train", "--env-id", "MathReasoning-v0", "--model", "random-tiny", "--env-kwargs", '{"problems": "gsm9k"}'], ["Did you mean 'gsm8k'"]),
    ("huge response budget", ["train", "--env-id", "Arithmetic-v0", "--model", "random-tiny", "--env-kwargs", '{"max_response_tokens": 1000000000000}'], ["max_response_tokens=1000000000000"]),
    ("bad flag value", ["train", "--learning-rate", "abc"], ["learning_rate"]),
    ("unknown flag", ["train", "--learnin-rate", "1"], ["--learnin-rate"]),
    ("unknown algo", ["train", "--algo", "nope"], ["Unknown algorithm 'nope'"]),
    ("unknown strategy", ["compare", "--strategies", "nope"], ["Unknown strategies"]),
    ("unknown command", ["trian"], ["Did you mean 'train'"]),
    ("missing --config file", ["train", "--config", "/nonexistent.yaml"], ["/nonexistent.yaml"]),
]


@pytest.mark.parametrize(("what", "argv", "needles"), CASES, ids=[c[0] for c in CASES])
def test_user_errors_are_one_line(tmp_path: Path, what: str, argv: list[str], needles: list[str]) -> None:
    extra = FAST if argv[0] in ("train", "eval") and "--algo" not in argv and "--learning-rate" not in argv else []
    if argv[0] == "train" and "--output-dir" not in argv and extra:
        extra = [*extra, "--output-dir", str(tmp_path / "out")]
    code, err = run_main(argv + extra)
    assert code == 2, (what, code, err)
    assert_one_line(err, *needles)


def test_debug_shows_the_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    argv = [sys.executable, "-m", "deepgrpo_agent.cli", "train", "--env-id", "CartPole-v1"]
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert plain.returncode == 2 and plain.stdout == ""
    assert_one_line(plain.stderr, "CartPole-v1")
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, env=env, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "UsageError" in debug.stderr


FLAGS = ["--env-id", "--model", "--learning-rate", "--group-size", "--total-steps", "--device", "--env-kwargs",
         "--temperature", "--adam-betas", "--no-progress", "--resume", "--dtype", "--seed", "--config", "--x"]
WORDS = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(["-1", "0", "nan", "inf", "1e309", "none", "{", "[]", '{"levl": 1}', "cuda", "Arithmetic-v0",
                     "CartPole-v1", "", "\x00", "é", "--", "-"]),
    st.text(max_size=8),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(WORDS, max_size=8))
def test_fuzzed_command_lines_give_a_config_or_one_line(argv: list[str]) -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            config = parse_config(GRPOConfig, argv, prog="deepgrpo train")
        except SystemExit as e:
            if e.code != 0:  # --help prints help and exits 0
                assert e.code == 2
                assert_one_line(err.getvalue())
            return
    try:
        cli.check_env_args(config.env_id, dict(config.env_kwargs))
    except cli.UsageError as e:
        assert "\n" not in str(e)
