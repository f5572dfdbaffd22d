#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh) and runs the main job: a short real GRPO training run of the
# embedded default model (SmolLM2-135M-Instruct) on MAWPS, on the CPU, with before/after accuracy
# (docs/main_job.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/deepgrpo main "$@"
