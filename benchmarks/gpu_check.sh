#!/usr/bin/env bash
# GPU check for the paper config (issue #8): train stars/s (float32, bfloat16, bfloat16 + length buckets),
# compile time, model FLOPs per star and MFU, inference stars/s over 1M stars, peak device memory.
# Needs jax (with its CUDA plugin), flax, optax, numpy; no network. Under 8 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh            # on the accelerator; JSON to $OUT/gpu_check.json when OUT is set
#   bash benchmarks/gpu_check.sh --dry-run  # every stage with tiny sizes, on a CPU, in well under a minute
# Extra arguments go to benchmarks/gpu_check.py (e.g. --batch 4096 --steps 200 --peak-tflops 989).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
# Lift the default 75% preallocation so the memory figure is the program's peak, not the pool size.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
# python3: the device image has no plain `python`; PYTHON overrides (gpu_session.py passes its own interpreter).
exec timeout "${GPU_CHECK_TIMEOUT_S:-460}" "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
