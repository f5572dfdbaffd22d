#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the checks CI runs: ruff, mypy, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check deepgrpo_env deepgrpo_agent envs_registry tests benchmarks examples scripts
python scripts/check_imports.py
mypy --strict deepgrpo_env deepgrpo_agent envs_registry
python -m pytest -q "$@"
