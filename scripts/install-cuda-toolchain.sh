#!/usr/bin/env bash
# Installs the pinned nvcc 13.0 (from NVIDIA's PyPI wheels) into .toolchain/cuda-venv (git-ignored).
# No CUDA install, no root needed. Pins matter: a newer nvvm emits PTX the 13.0 assembler rejects.
# Prints the nvcc path on success. Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CUDA_NVCC_VENV:-$ROOT/.toolchain/cuda-venv}"
PY="${PYTHON:-python3}"
find_nvcc() { ls "$VENV"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1; }
NVCC="$(find_nvcc || true)"
if [ -n "$NVCC" ] && "$NVCC" --version 2>/dev/null | grep -q "release 13.0"; then
  echo "$NVCC"; exit 0
fi
if ! "$PY" -m venv --help >/dev/null 2>&1; then
  echo "install-cuda-toolchain: python3 with venv is required (apt-get install python3-venv)" >&2; exit 1
fi
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 >&2
NVCC="$(find_nvcc)"
"$NVCC" --version >&2
echo "$NVCC"
