#!/bin/bash
# Issue 7's GPU rows in one device call per backend (not yet run on a GPU: if a call nears the
# device tool's 10-minute limit, split it with PRECISIONS / LOSS_STEP below).
#
#   ../shared/tools/gpu-wheels          # once, on the development machine: fills the ignored .whl/
#   run (device tool), carry [".whl"]:  bash benchmarks/gpu_issue7.sh jax     # then: ... torch
#
# Installs Keras & co. from .whl/ (the GPU machine has torch, JAX and CUDA but no Keras and no
# TensorFlow), then runs `ssaseg-keras benchmark` (SegNeXt-T, 171 classes, batch 16, 512x512) in both
# precisions and `benchmarks/loss_step.py` with both resize methods, writing logs and JSON under
# $OUT (default: ./gpu_out).
set -u
backend=${1:?usage: gpu_issue7.sh jax|torch}
out=${OUT:-gpu_out}
mkdir -p "$out"
batch=${BATCH:-16} size=${SIZE:-512} iters=${ITERS:-20} warmup=${WARMUP:-10}  # smaller: a smoke run
# To split the work over several calls: PRECISIONS="float32" (default: both), LOSS_STEP=0 (skip it).
loss_step=${LOSS_STEP:-1}
# Compiled programs persist across calls while the machine stays warm (JAX).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
if [ -z "${SKIP_INSTALL:-}" ]; then
  ls .whl/*.whl > /dev/null 2>&1 || { echo "no wheels in .whl/: run ../shared/tools/gpu-wheels first and carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export KERAS_BACKEND=$backend
# The console script is not installed here: the CLI package is cli/ under its installed name.
ln -sfn cli ssaseg_keras_cli
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1

case $backend in
  jax) precisions=${PRECISIONS:-"mixed_bfloat16 float32"} ;;
  torch) precisions=${PRECISIONS:-"mixed_float16 float32"} ;;
  *) echo "backend must be jax or torch" >&2; exit 2 ;;
esac
for precision in $precisions; do
  python3 -c "from ssaseg_keras_cli.main import main; main()" benchmark recipes/segnext_t_coco.yaml \
    --batch "$batch" --size "$size" --iters "$iters" --warmup "$warmup" --precision "$precision" \
    --json "$out/${backend}_${precision}.json" 2>&1 | tee "$out/${backend}_${precision}.log" | tail -n 16
done
[ "$loss_step" = 0 ] || for resize in matmul gather; do  # the losses' upsampling: dense matmuls (default) or two-tap gathers
  python3 benchmarks/loss_step.py --batch "$batch" --size "$size" --iters "$iters" --warmup "$warmup" \
    --resize "$resize" 2>&1 | tee "$out/${backend}_loss_step_${resize}.log" | tail -n 5
done
rm -f ssaseg_keras_cli
