#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the checks CI runs: ruff, mypy, the test suite, then the
# vLLM tier (tests marked `vllm`) in .venv-vllm (scripts/setup.sh --vllm).
#
# With arguments, only the suite runs, with them (e.g. `bash scripts/test.sh tests/agent/test_engine.py`).
# DEEPGRPO_VLLM_TIER=0 skips the vLLM tier (it needs an x86_64 CPU with AVX-512, or CUDA).
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
deactivate
if [ $# -eq 0 ] && [ "${DEEPGRPO_VLLM_TIER:-1}" != 0 ]; then
  start=$(date +%s)
  bash scripts/setup.sh --vllm
  echo "vLLM venv ready in $(( $(date +%s) - start )) s"
  .venv-vllm/bin/python -m pytest -q -rs -m vllm -p no:cacheprovider
fi
