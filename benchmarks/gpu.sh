#!/usr/bin/env bash
# VGG16 on a lent GPU (e.g. one H200), in under 5 minutes: bf16-vs-f32 correctness, then img/s of
# inference, the frozen-head step and the full fine-tune step over batch sizes; a short table last.
# Needs python with jax[cuda], flax, optax, numpy (no tensorflow, no network).
#
#   bash benchmarks/gpu.sh                      # full run, results also in $OUT/gpu.json if OUT is set
#   bash benchmarks/gpu.sh --tiny               # a tiny VGG (what tests/test_bench.py runs on CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export VGG_JAX_NO_COMPILATION_CACHE=1          # measure cold compiles, leave no cache behind
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-1}"
PY="${PYTHON:-python3}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import jax, flax, optax, numpy; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)"
JSON=()
if [[ -n "${OUT:-}" ]]; then JSON=(--json "$OUT/gpu.json"); fi
exec timeout 330 "$PY" benchmarks/gpu_bench.py "${JSON[@]}" "$@"
