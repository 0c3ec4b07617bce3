#!/bin/bash
# Issue 7's GPU figures in one device call (see benchmarks/gpu_issue7.py for the steps and budget).
#
#   ../shared/tools/gpu-wheels          # once, on the development machine: fills the ignored .whl/
#   run (device tool), carry [".whl"], timeout_s 600:   bash benchmarks/gpu_issue7.sh
#   a second call, if device time is left:              bash benchmarks/gpu_issue7.sh --budget 300 bench:jax:float32
#
# Installs Keras & co. from .whl/ (the GPU machine has torch, JAX and CUDA but no Keras and no
# TensorFlow) and runs gpu_issue7.py with the arguments given. SKIP_INSTALL=1: use what is installed.
set -u
if [ -z "${SKIP_INSTALL:-}" ]; then
  ls .whl/*.whl > /dev/null 2>&1 || { echo "no wheels in .whl/: run ../shared/tools/gpu-wheels first and carry .whl" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# Compiled programs persist across the steps (and calls, while the machine stays warm) on JAX.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax-cache}
# The console script is not installed there: the CLI package is cli/ under its installed name.
ln -sfn cli ssaseg_keras_cli
trap 'rm -f ssaseg_keras_cli' EXIT
python3 benchmarks/gpu_issue7.py "$@"
