#!/usr/bin/env bash
# The test command (README; .ci/run calls it): installs what is missing, then builds every
# kernel with nvcc and runs the whole test suite. GPU tests print SKIP lines without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
scripts/deps.sh
export CUDA_NVCC_VENV="$ROOT/.toolchain/cuda-venv"
cargo build --release --all-targets
mkdir -p target
cargo test --release -- --nocapture 2>&1 | tee target/test.log
echo "---- skipped (no GPU or missing input) ----"
grep -h "^SKIP" target/test.log | sort | uniq -c || true
echo "ALL TESTS PASSED"
