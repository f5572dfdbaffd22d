#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the checks CI runs: ruff, mypy, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check deepgrpo_env deepgrpo_agent envs_registry tests benchmarks examples scripts
python scripts/check_imports.py
mypy --strict deepgrpo_env deepgrpo_agent envs_registry
# --- ray tier (issue 16): setup.sh installed the extra; the tests marked `ray` run in the suite below.
[ "${DEEPGRPO_RAY:-1}" = 0 ] || python -c "import ray" || { echo "ray tier: Ray is missing after scripts/setup.sh" >&2; exit 1; }
# --- end ray tier ---
python -m pytest -q "$@"
