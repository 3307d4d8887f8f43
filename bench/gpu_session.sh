#!/usr/bin/env bash
# The GPU checks of one session, in two calls of the device tool (each under its 600 s limit).
#
# Prepare here first: `python bench/prepare_gpu_data.py` (lego and the AV2 pair into gpu_data/, 43 MiB) and
# `pip download gsplat==1.5.3 --no-deps -d .whl` (6.3 MB); both folders are git-ignored, so pass
# carry ["gpu_data", ".whl"] with each call. Results land in $OUT (the device tool's output folder).
#
#   bash bench/gpu_session.sh 1   # bench/gpu.py: build, CUDA-vs-reference parity, op timings, instant-ngp on lego
#   bash bench/gpu_session.sh 2   # bench/gpu_gaussians.py against gsplat, the CUDA test tier, NSFP on the GPU
set -uo pipefail
part=${1:?usage: bash bench/gpu_session.sh 1|2}
[[ "$part" == 1 || "$part" == 2 ]] || { echo "usage: bash bench/gpu_session.sh 1|2" >&2; exit 2; }
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT" /tmp/p
ln -sfn "$PWD" /tmp/p/omnifield  # the repository root is the omnifield package
export PYTHONPATH=/tmp/p PYTHONUNBUFFERED=1
# The toolkit our builds use (native.find_cuda_toolkit looks behind an nvcc wrapper script), for gsplat's
# just-in-time build too, which takes torch's CUDA_HOME as it is.
if [[ -z "${CUDA_HOME:-}" ]]; then
  CUDA_HOME=$(python3 -c "from omnifield.cuda import native; print(native.find_cuda_toolkit().home or '')" 2>/dev/null)
  [[ -n "$CUDA_HOME" ]] && export CUDA_HOME || unset CUDA_HOME
fi
echo "CUDA_HOME=${CUDA_HOME:-unset}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  | tee "$OUT/gpu.txt"

case "$part" in
  1)
    timeout 570 python3 bench/gpu.py --out "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
    ;;
  2)
    python3 -m pip install --no-index --no-deps --target /tmp/site .whl/gsplat-*.whl -q 2>&1 | tail -2
    export PYTHONPATH=/tmp/p:/tmp/site
    timeout 330 python3 bench/gpu_gaussians.py --out "$OUT/gpu_gaussians.json" 2>&1 | tee "$OUT/gpu_gaussians.log"
    if python3 -c "import pytest" 2>/dev/null; then
      timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_gaussians.py tests/test_cuda_encodings.py \
        tests/test_cuda_marching.py tests/test_nsfp.py -k "cuda or gpu or Cuda" 2>&1 | tail -30 | tee "$OUT/pytest_gpu.log"
    else
      echo "pytest is not installed here: the CUDA test tier did not run" | tee "$OUT/pytest_gpu.log"
    fi
    OMNIFIELD_SHARED_DATA=gpu_data timeout 150 python3 bench/flow.py --only av2 --device cuda --threads 4 \
      --out "$OUT/flow_gpu.json" 2>&1 | tail -40 | tee "$OUT/flow_gpu.log"
    ;;
esac
