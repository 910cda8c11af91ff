#!/usr/bin/env bash
# Installs the pinned CUDA 12.9 kernel compiler (NVRTC + the CUDA headers, from NVIDIA's PyPI
# wheels) into .toolchain/cuda12 (git-ignored), plus nvdisasm for the static kernel gate's SASS
# checks. No CUDA install, no root needed. build.rs loads NVRTC from there.
#
# Why CUDA 12.9: SASS built by a CUDA 12 toolkit runs on every driver from CUDA 12.0 (R525) on,
# while a CUDA 13 build needs R580. The registry has no CUDA 12 nvcc program (the cu12 nvcc wheel
# holds ptxas and libnvvm only), so the build uses NVRTC, the compiler as a library.
# Prints the toolchain folder on success. Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CONTENTV_CUDA_TOOLCHAIN:-$ROOT/.toolchain/cuda12}"
PY="${PYTHON:-python3}"
PINS=(nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-nvdisasm==13.2.51)
ok() {
  ls "$VENV"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 >/dev/null 2>&1 &&
  ls "$VENV"/lib/python3*/site-packages/nvidia/cuda_runtime/include/cuda_bf16.h >/dev/null 2>&1 &&
  ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvdisasm >/dev/null 2>&1 &&
  [ "$(cat "$VENV/.pins" 2>/dev/null)" = "${PINS[*]}" ]
}
if ok; then echo "$VENV"; exit 0; fi
if ! "$PY" -m venv --help >/dev/null 2>&1; then
  echo "install-cuda-toolchain: python3 with venv is required (apt-get install python3-venv)" >&2; exit 1
fi
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check "${PINS[@]}" >&2
echo "${PINS[*]}" > "$VENV/.pins"
ok || { echo "install-cuda-toolchain: the wheels installed but NVRTC/headers/nvdisasm are not where expected under $VENV" >&2; exit 1; }
echo "$VENV"
