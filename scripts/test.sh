#!/usr/bin/env bash
# The test command (README; .ci/run calls it): installs what is missing, then builds every
# kernel with NVRTC (CUDA 12.9) and runs the whole test suite, the static kernel gate included
# (tests/kernel_gate.rs). GPU tests print SKIP lines without a GPU; then, without a GPU, the
# whole suite runs again on the emulated CUDA device (tests/emu/device: the real kernels and the
# engine's CUDA path on the CPU), once with the compute stream preferred and once (the
# stream-ordering tests) with the copy stream preferred, and the GPU check
# (scripts/gpu-check.sh) is rehearsed there at tiny sizes.
# CONTENTV_SKIP_EMU_DEVICE=1 skips that second part.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
scripts/deps.sh --test
cargo build --release --all-targets
mkdir -p target
# deps.sh installed chromium: the browser test of the server's page must run, not skip
# CONTENTV_REQUIRE_OPENAI: CI reaches PyPI, so the OpenAI SDK test (tests/serve_openai.rs,
# which installs its pinned openai into target/openai-venv) must run, not skip. The server's
# soak (tests/serve_soak.rs) runs here only (CONTENTV_CPU_TESTS_DONE skips it below).
CONTENTV_REQUIRE_BROWSER=1 CONTENTV_REQUIRE_OPENAI=1 cargo test --release -- --nocapture 2>&1 | tee target/test.log
echo "---- skipped (no GPU or missing input) ----"
grep -h "^SKIP" target/test.log | sort | uniq -c || true
# No CUDA driver here (the GPU tests said so): run them on the emulated device.
if [ "${CONTENTV_SKIP_EMU_DEVICE:-0}" != 1 ] && grep -q "^SKIP: the CUDA driver library" target/test.log; then
  echo "---- the GPU tests on the emulated CUDA device (not a GPU: nothing measured here is a GPU number) ----"
  EMU="$(scripts/emu-device.sh)"
  # CONTENTV_CPU_TESTS_DONE: the CPU-only binaries (kernels_emu, the kernel gate, the server's
  # tests on the CPU) say SKIP instead of repeating the first pass.
  LD_LIBRARY_PATH="$EMU" CONTENTV_EMU_STREAMS=compute-first CONTENTV_CPU_TESTS_DONE=1 \
    cargo test --release -- --nocapture 2>&1 | tee target/test-emu.log
  LD_LIBRARY_PATH="$EMU" CONTENTV_EMU_STREAMS=copy-first \
    cargo test --release --test runtime --test quant -- --nocapture 2>&1 | tee -a target/test-emu.log
  # The emulated device is an sm_90: the suite above ran the Hopper attention kernel. The
  # pipeline, the transformer and the text encoders again with the mma kernel forced (the
  # kernel of every other GPU), the transformer with the naive one (the fallback; it is also
  # the kernel of the head dims other than 64 that parity_variants_transformer ran above).
  LD_LIBRARY_PATH="$EMU" CONTENTV_ATTENTION=mma \
    cargo test --release --test parity_pipeline --test parity_transformer --test parity_text -- --nocapture 2>&1 | tee -a target/test-emu.log
  LD_LIBRARY_PATH="$EMU" CONTENTV_ATTENTION=naive \
    cargo test --release --test parity_transformer -- --nocapture 2>&1 | tee -a target/test-emu.log
  echo "---- skipped on the emulated device ----"
  grep -h "^SKIP" target/test-emu.log | sort | uniq -c || true
  echo "---- the GPU check, rehearsed on the emulated device (tiny sizes) ----"
  scripts/gpu-check.sh --rehearse 2>&1 | tee target/gpu-check-rehearsal.log | grep -E "^(GPU|generate|device|bench-[a-z_0-9]+: (ok|FAILED)|torch|sanitizer|test-.*FAILED)"
fi
# ---- the Python package (python/): the wheel built once, pytest on the CPU (or the GPU) and
# on the emulated CUDA device (scripts/test-python.sh) ----
echo "---- the Python package (python/tests) ----"
CONTENTV_EMU_DEVICE_LIB="${EMU:-}" scripts/test-python.sh 2>&1 | tee target/test-python.log
echo "ALL TESTS PASSED"
