#!/usr/bin/env bash
# Builds the emulated CUDA device (tests/emu/device): one shared library standing in for
# libcuda.so and libcublasLt.so that runs the real kernels/*.cu on the CPU emulation. Prints the
# folder to put on LD_LIBRARY_PATH:
#   LD_LIBRARY_PATH=$(scripts/emu-device.sh) cargo test --release --test ops_gpu
# Then every GPU test runs its CUDA path (runtime, launchers, kernels, cuBLASLt calls, weight
# streaming) on the CPU; the device calls itself "contentv CPU emulation (not a GPU)".
# CONTENTV_EMU_ASAN=1 builds it with AddressSanitizer (then also LD_PRELOAD the asan runtime).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${CONTENTV_EMU_DEVICE_DIR:-$ROOT/target/emu-device}"
CXX="${CXX:-$(command -v c++ || command -v g++ || command -v clang++ || true)}"
if [ -z "$CXX" ]; then echo "emu-device: no C++ compiler (set CXX or install g++ or clang)" >&2; exit 1; fi
mkdir -p "$OUT/obj"
FLAGS=(-std=c++17 -O2 -g -fPIC -fno-strict-aliasing -Wall -Wno-unknown-pragmas -Wno-psabi)
if [ "${CONTENTV_EMU_ASAN:-0}" = 1 ]; then FLAGS+=(-fsanitize=address); fi
E="$ROOT/tests/emu"
pids=()
for src in "$E/emu.cpp" "$E"/device/*.cpp; do
  "$CXX" "${FLAGS[@]}" -I "$E/include" -I "$E" -I "$E/device" -I "$ROOT/kernels" -c "$src" \
    -o "$OUT/obj/$(basename "${src%.cpp}").o" >&2 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
"$CXX" "${FLAGS[@]}" -shared "$OUT"/obj/*.o -o "$OUT/libcontentv_emu_device.so" >&2
for n in libcuda.so libcuda.so.1 libcublasLt.so; do ln -sfn libcontentv_emu_device.so "$OUT/$n"; done
echo "$OUT"
