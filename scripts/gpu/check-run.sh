#!/usr/bin/env bash
# The GPU check's runner (scripts/gpu-check.sh copies it to .gpu-check/run.sh). Run from the
# repository root. One command that ends within BUDGET seconds (default 540: one device call is
# at most 600), parts ordered by value, each with its own cap and cut to the time left; every
# result line goes to $OUT/summary.txt as it is produced; logs end in $OUT/logs.tar.gz.
# Exit status: 0 when every part that ran passed.
#
# Environment: BUDGET (seconds), OUT (output folder), CONTENTV_BENCH_REHEARSAL=1 (the CI
# rehearsal on the emulated device: tiny sizes, test binaries only listed, caps x CAP_SCALE),
# PYTHON.
set -o pipefail
cd "$(dirname "$0")/.."
export CONTENTV_ROOT="$PWD"
START=$(date +%s)
BUDGET="${BUDGET:-540}"
REH="${CONTENTV_BENCH_REHEARSAL:-0}"
# The emulated device runs the rehearsal's tiny sizes far slower than a GPU runs the real ones
# (an INT8 generate: about a minute): its caps are 4x.
CAP_SCALE="${CAP_SCALE:-$([ "$REH" = 1 ] && echo 4 || echo 1)}"
OUTDIR="${OUT:-/tmp/contentv-gpu-check}"; mkdir -p "$OUTDIR"
SUM="$OUTDIR/summary.txt"; : > "$SUM"
LOGS=/tmp/contentv-gpu-check-logs; rm -rf "$LOGS"; mkdir -p "$LOGS"
say() { echo "$@" | tee -a "$SUM"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
fails=()

# The binaries read fixtures and the tiny model from the folder they were built in: make that
# path lead here when it is not this checkout.
BUILT="$(cat .gpu-check/root.txt 2>/dev/null || true)"
if [ -n "$BUILT" ] && [ "$(cd "$BUILT" 2>/dev/null && pwd -P)" != "$(pwd -P)" ]; then
  if [ -e "$BUILT" ]; then
    say "WARNING: $BUILT exists and is not this checkout: tests read their fixtures from there"
  else
    mkdir -p "$(dirname "$BUILT")" && ln -sfn "$PWD" "$BUILT"
  fi
fi
# Binaries: packed (a real bundle) or in place (the rehearsal).
if [ -f .gpu-check/bin.tar.xz ]; then
  BIN=/tmp/contentv-gpu-check-bin; rm -rf "$BIN"; mkdir -p "$BIN"
  tar -C "$BIN" -xJf .gpu-check/bin.tar.xz || { say "FAILED: cannot unpack .gpu-check/bin.tar.xz"; exit 1; }
  BIN="$BIN/bin"
else
  BIN="$PWD/.gpu-check/bin"
fi
[ -x "$BIN/bin-contentv" ] || { say "FAILED: no binaries in $BIN (run scripts/gpu-check.sh first)"; exit 1; }
# cuBLAS/cuDNN from PyTorch's wheels when present.
for d in $(${PYTHON:-python3} -c 'import nvidia, os; p=nvidia.__path__[0]; print(" ".join(os.path.join(p,x,"lib") for x in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH

# run NAME CAP CMD...: runs CMD for at most min(CAP, time left - 10 s), log in $LOGS/NAME.log;
# returns CMD's status (124: cut by the cap), or 125 without starting when too little time is left.
run() {
  local name=$1 cap=$(( $2 * CAP_SCALE )); shift 2
  local l; l=$(left)
  if [ "$l" -lt 25 ]; then say "$name: SKIP (no time left: ${l} s)"; return 125; fi
  [ "$cap" -gt $((l - 10)) ] && cap=$((l - 10))
  local s0; s0=$(date +%s)
  timeout -k 5 "$cap" "$@" > "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - s0 )) s (cap $cap s)" >> "$LOGS/times.txt"
  return $rc
}
# bench NAME CAP CMD...: a run whose every output line is a result line.
bench() {
  local name=$1
  run "$@"; local rc=$?
  [ $rc = 125 ] && return 0
  sed "s/^/$name: /" "$LOGS/$name.log" | grep -v "^$name: $" | tee -a "$SUM" | tail -n 40
  if [ $rc = 0 ]; then say "$name: ok in $(tail -n1 "$LOGS/times.txt" | sed 's/.* in //')"; else say "$name: FAILED (exit $rc)"; fails+=("$name"); fi
}
torch() {  # torch NAME CAP SECTIONS...: the PyTorch side-by-side for these sections
  local name=$1 cap=$2; shift 2
  if ! ${PYTHON:-python3} -c 'import torch' 2>/dev/null; then
    # Nothing to compare with here; still make sure the script itself parses.
    if ${PYTHON:-python3} -m py_compile scripts/gpu/torch_bench.py 2>"$LOGS/$name.log"; then
      say "$name: SKIP (no PyTorch on this machine; torch_bench.py compiles)"
    else
      say "$name: FAILED: scripts/gpu/torch_bench.py does not compile"; fails+=("$name")
    fi
    return
  fi
  local pp=""
  if [[ " $* " == *" block "* || " $* " == *" vae "* ]]; then
    rm -rf /tmp/contentv-site
    if ls .gpu-check/whl/*.whl >/dev/null 2>&1 && ${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/contentv-site .gpu-check/whl/*.whl >/dev/null 2>&1; then
      pp=/tmp/contentv-site
    else
      say "$name: SKIP (the diffusers wheel is not in the bundle)"; return
    fi
  fi
  local q=""; [ "$REH" = 1 ] && q="--quick"
  PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 bench "$name" "$cap" ${PYTHON:-python3} scripts/gpu/torch_bench.py $q "$@"
}

say "GPU check: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1 || echo 'no nvidia-smi'); $(date -u +%FT%TZ); budget ${BUDGET} s$([ "$REH" = 1 ] && echo '; REHEARSAL (emulated device, tiny sizes: nothing here is a measurement)')"

# ---- (a) device facts and ceilings -----------------------------------------------------------
bench device 30 "$BIN/bin-contentv" device
bench bench-gpu_ops 90 "$BIN/bench-gpu_ops"

# ---- (b) correctness -----------------------------------------------------------------------
# Every GPU test binary; in the rehearsal only listed (the emulated test pass runs them).
tpass=0
for t in "$BIN"/test-*; do
  n=$(basename "$t")
  if [ "$REH" = 1 ]; then args=(--list); else args=(--test-threads=1 --nocapture); fi
  run "$n" 150 "$t" "${args[@]}"; rc=$?
  [ $rc = 125 ] && continue
  grep -E "^(SKIP|test result)|FAILED|panicked" "$LOGS/$n.log" | tail -n 8
  # measured lines the tests print (max errors, cosines, timings) go to the summary
  grep -E "max abs|max err|cosine|PSNR| ms|GB/s|TFLOP" "$LOGS/$n.log" | grep -vE "^test .* ok$" | head -n 20 | sed "s/^/$n: /" >> "$SUM"
  if [ $rc = 0 ]; then tpass=$((tpass + 1)); say "$n: ok"; else say "$n: FAILED (exit $rc)"; fails+=("$n"); fi
done
# The binary end to end on the GPU, built-in tiny model, every memory mode (PNG frames: the
# bundle is built without FFmpeg; in the rehearsal the test build's MP4 writer).
GEN=(--prompt "A young musician strumming an acoustic guitar" --seed 42)
[ "$REH" = 1 ] && GEN+=(--frames 1 --width 16 --height 16 --steps 1)
i=0
for mode in "" "--offload model" "--offload sequential" "--quantize int8" "--offload sequential --quantize int8 --vae-tiling" "--vram-budget 1"; do
  i=$((i + 1)); n="generate-$i"
  rm -rf "$LOGS/$n"; mkdir -p "$LOGS/$n"
  # shellcheck disable=SC2086
  run "$n" 60 "$BIN/bin-contentv" generate --device cuda "${GEN[@]}" --output "$LOGS/$n/out.mp4" \
    --save-latents "$LOGS/$n/latents.safetensors" --json $mode; rc=$?
  [ $rc = 125 ] && continue
  stats=$(grep -oE '"(encode|denoise|per_step|decode|gpu_peak_reserved_bytes)": *[0-9.]+' "$LOGS/$n.log" | tr '\n' ' ')
  if [ $rc = 0 ]; then say "$n (generate --device cuda $mode): ok; $stats"; else say "$n (generate --device cuda $mode): FAILED (exit $rc): $(tail -n 2 "$LOGS/$n.log" | tr '\n' ' ')"; fails+=("$n"); fi
  rm -rf "$LOGS/$n"  # the frames are noise; keep the log
done

# ---- (c) headline numbers with their PyTorch counterparts ------------------------------------
bench bench-attention 90 "$BIN/bench-attention"
torch torch-sdpa 90 sdpa
# W8A16: the fused kernel and dequantise + cuBLASLt over a sweep of M (16 .. 8192 and the video
# tokens) at N, K = 2432 x 2432 and 9728 x 2432; its "crossover" lines give the real INT8_CROSSOVER_M.
bench bench-gemm_int8 90 "$BIN/bench-gemm_int8"
CONTENTV_BENCH_LAYERS="${CONTENTV_BENCH_LAYERS:-2}" bench bench-gpu_model 120 "$BIN/bench-gpu_model"
torch torch-block 90 block
# The roofline with the achieved time of every op of a step and of the decode at the default size.
ROOF=(--vae-precision bf16)
[ "$REH" = 1 ] && ROOF+=(--model assets/tiny-model --frames 5 --width 32 --height 32)
bench roofline 120 "$BIN/bin-contentv" roofline --measure "${ROOF[@]}"
# Step caching (issue 27): the built-in tiny model (random weights: the quality figures only show
# the mechanism, not what the real checkpoint would look like) at the default size, 10 steps,
# each adaptive method at its default threshold with --cache-report (the same request without
# the cache: PSNR / SSIM / latents cosine, steps computed, denoise seconds, speed-up).
CACHE=(--prompt "A young musician strumming an acoustic guitar" --seed 42 --steps 10 --frames 125 --width 768 --height 432)
[ "$REH" = 1 ] && CACHE=(--prompt "x" --seed 42 --steps 3 --frames 1 --width 16 --height 16 --cache-warmup 1)
for m in easy fbcache; do
  rm -rf "$LOGS/cache-$m"; mkdir -p "$LOGS/cache-$m"
  run "cache-$m" 90 "$BIN/bin-contentv" generate --device cuda "${CACHE[@]}" --cache "$m" --cache-report \
    --output "$LOGS/cache-$m/out.mp4"; rc=$?
  [ $rc = 125 ] && continue
  if [ $rc = 0 ]; then
    say "cache-$m: $(grep -E '^step cache|^cache report' "$LOGS/cache-$m.log" | tr '\n' ' ')"
  else say "cache-$m: FAILED (exit $rc): $(tail -n 2 "$LOGS/cache-$m.log" | tr '\n' ' ')"; fails+=("cache-$m"); fi
  rm -rf "$LOGS/cache-$m"
done
bench bench-gpu_vae 120 "$BIN/bench-gpu_vae"
torch torch-vae 120 vae
torch torch-ceilings-conv-t5 90 ceilings conv t5

# ---- (d) compute-sanitizer over the kernel op tests, if installed and time is left -----------
CS="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1 || true)"
if [ "$REH" = 1 ]; then
  say "sanitizer: SKIP (rehearsal)"
elif [ -z "$CS" ]; then
  say "sanitizer: SKIP (compute-sanitizer not installed)"
else
  for tool in memcheck racecheck; do
    run "sanitizer-$tool" 120 "$CS" --tool "$tool" --error-exitcode 99 "$BIN/test-ops_gpu" --test-threads=1; rc=$?
    [ $rc = 125 ] && continue
    say "sanitizer-$tool (test-ops_gpu): exit $rc; $(grep -E 'ERROR SUMMARY|errors' "$LOGS/sanitizer-$tool.log" | tail -n 1)"
    [ $rc = 0 ] || [ $rc = 124 ] || fails+=("sanitizer-$tool")
  done
fi

tar -C "$LOGS" -czf "$OUTDIR/logs.tar.gz" . 2>/dev/null
say "GPU-CHECK: $tpass test binaries passed; ${#fails[@]} failed: ${fails[*]:-none}; $(( $(date +%s) - START )) s of ${BUDGET} s"
[ ${#fails[@]} = 0 ]
