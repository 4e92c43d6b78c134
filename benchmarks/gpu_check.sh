#!/usr/bin/env bash
# One prepared GPU check (issue 11): the CUDA tests (including the no-host-sync test), throughput at
# N = 1,000 and 80,000 with B up to 256, the compiled engine, and AlexNet / ResNet-50 training steps at 220x220
# with AMP; one JSON under benchmarks/results/; ends within 8 minutes (hard deadline 470 s + the outer timeout).
#
#   bash benchmarks/gpu_check.sh               # on a CUDA machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   # checks the script itself on a CPU (figures meaningless)
#
# PYTHON overrides the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if [[ " $* " == *" --cpu-smoke "* ]]; then
  exec "$PY" benchmarks/gpu_check.py "$@"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec timeout --kill-after=5 475 "$PY" benchmarks/gpu_check.py --deadline 470 "$@"
