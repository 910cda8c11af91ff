#!/usr/bin/env bash
# The GPU check: one prepared command for a lent GPU machine (no Rust, no FFmpeg, no network),
# ordered by value, each part with its own time cap, every result line written to
# $OUT/summary.txt as it is produced (a command killed at its limit still returns its numbers).
#
#   here:    scripts/gpu-check.sh               builds .gpu-check/ (stripped binaries without the
#                                               ffmpeg feature, sm_90 kernels, xz; the diffusers
#                                               wheel for the PyTorch side-by-side)
#   there:   .gpu-check/run.sh                  (from the repo root; BUDGET=540 s by default)
#            with the device tool: run(carry=[".gpu-check"], command=".gpu-check/run.sh", timeout_s=600)
#   CI:      scripts/gpu-check.sh --rehearse    builds with the test build's features and runs
#                                               the same runner on the emulated device at tiny
#                                               sizes (tests listed, not rerun: the emulated
#                                               test pass runs them), so the first real call
#                                               cannot fail on a typo or a missing file.
#
# The parts, in order (scripts/gpu/check-run.sh): (a) device facts and ceilings; (b) correctness:
# every GPU test binary, then `contentv generate --device cuda` in six memory modes; (c) headline
# numbers with their PyTorch counterparts: attention vs SDPA, W8A16 (fused kernel and dequantise +
# cuBLASLt over a sweep of M: the INT8 crossover) vs cuBLASLt, transformer step
# per memory mode and one joint block vs diffusers, VAE decode vs diffusers, T5; (d) compute-
# sanitizer memcheck and racecheck over the kernel op tests, if installed and time is left.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
REHEARSE=0
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
B="$ROOT/.gpu-check"
scripts/install-cuda-toolchain.sh >/dev/null
if [ $REHEARSE = 1 ]; then
  FEATURES=()            # the test build's own artifacts: nothing is compiled twice in CI
else
  FEATURES=(--no-default-features)
  # The lent machines are Hopper (H100/H200): sm_90 images keep the bundle small.
  export CONTENTV_ARCHS="${CONTENTV_ARCHS:-sm_90}"
fi
rm -rf "$B"; mkdir -p "$B/bin"
msgs=$(cargo test --release "${FEATURES[@]}" --no-run --message-format=json 2>/dev/null)
benches=$(cargo build --release "${FEATURES[@]}" --benches --message-format=json 2>/dev/null)
bins=$(cargo build --release "${FEATURES[@]}" --bins --message-format=json 2>/dev/null)
printf '%s\n%s\n%s\n' "$msgs" "$benches" "$bins" | python3 -c '
import json, sys, shutil, os
out = sys.argv[1]
seen = set()
# CPU-only suites run in CI and stay home (the carry limit is 64 MiB with the repository).
cpu_only = {"test-cli", "test-safetensors_bad_files", "test-safetensors_props", "test-scheduler",
            "test-fixtures_smoke", "test-tokenizers", "test-tokenizer_fuzz",
            "test-parity_variants_pipeline", "test-kernels_emu", "bench-cpu_ops"}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"): continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"): continue
    t = m["target"]; kind = t["kind"][0]; test = m["profile"]["test"]
    if kind == "bench": name = "bench-" + t["name"]
    elif kind == "bin":
        if test: continue          # the binary'"'"'s own unit tests: none GPU
        name = "bin-" + t["name"]
    elif kind == "lib": name = "test-lib"
    else: name = "test-" + t["name"]
    if name in cpu_only or name in seen: continue
    seen.add(name)
    shutil.copy(m["executable"], os.path.join(out, name))
' "$B/bin"
n=$(ls "$B/bin" | wc -l)
for must in bin-contentv test-ops_gpu test-attention_gpu test-driver_compat bench-gpu_ops bench-attention bench-gemm_int8 bench-gpu_model bench-gpu_vae; do
  [ -x "$B/bin/$must" ] || { echo "gpu-check: $must was not built" >&2; exit 1; }
done
cp scripts/gpu/check-run.sh "$B/run.sh"; chmod +x "$B/run.sh"
# The binaries find the fixtures and the tiny model under the folder they were built in.
echo "$ROOT" > "$B/root.txt"
if [ $REHEARSE = 1 ]; then
  # Uncompressed and in place: the rehearsal runs it here.
  EMU="$(scripts/emu-device.sh)"
  rm -rf target/gpu-check-out; mkdir -p target/gpu-check-out
  LD_LIBRARY_PATH="$EMU" CONTENTV_BENCH_REHEARSAL=1 OUT="$ROOT/target/gpu-check-out" BUDGET="${BUDGET:-900}" "$B/run.sh"
  exit $?
fi
strip "$B"/bin/* 2>/dev/null || true
tar -C "$B" -cJf "$B/bin.tar.xz" bin && rm -rf "$B/bin"
# diffusers 0.33.1 (the reference's version) and its huggingface_hub for the PyTorch
# side-by-side; the GPU machine has torch and transformers but no diffusers. Optional.
mkdir -p "$B/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$B/whl" diffusers==0.33.1 huggingface_hub==0.30.2 >/dev/null 2>&1 \
  || echo "warning: could not download the diffusers wheel; the torch 'block' and 'vae' parts will SKIP" >&2
echo "gpu-check: $n binaries in $(du -sh "$B" | cut -f1) at $B; tracked tree $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes" >&2
echo "run on the GPU machine: .gpu-check/run.sh   (device tool: carry [\".gpu-check\"], timeout_s 600)" >&2
