#!/usr/bin/env bash
# Builds every test and benchmark binary (without the ffmpeg feature, so the GPU machine needs
# no FFmpeg libraries) into .gpu-bundle/ (git-ignored) with a runner script, so the whole GPU
# suite runs on a machine that has a GPU but no Rust toolchain:
#
#   here:   scripts/gpu-bundle.sh
#   there:  .gpu-bundle/run.sh            (from the repo root; prints a pass/fail summary last)
#
# The runner points LD_LIBRARY_PATH at PyTorch's nvidia wheels (cuBLAS, cuDNN) when present.
# PHASE picks what it runs (one device call is at most 10 minutes, a session has 30):
#   PHASE=tests   every bundled test binary (GPU parity, op tests, kernel regressions)
#   PHASE=bench   the GPU benches (ops + ceilings, attention, INT8 GEMM, model, VAE)
#   PHASE=torch   the PyTorch side-by-side (scripts/gpu/torch_bench.py) on the same GPU
#   PHASE=all     all three (default)
# ONLY=<regex> narrows the test binaries, BENCH_ONLY=<regex> the benches, TORCH_SECTIONS the
# PyTorch sections (TORCH_ARGS passes e.g. --quick). Logs are packed into $OUT/logs.tar.gz (the device tool returns at most 8
# files); $OUT/summary.txt holds the summary lines and every bench/torch line.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CUDA_NVCC_VENV="$ROOT/.toolchain/cuda-venv"
[ -x "$(ls $CUDA_NVCC_VENV/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1)" ] || scripts/install-cuda-toolchain.sh >/dev/null
# The lent GPU machines are Hopper (H100/H200): sm_90 code only keeps the bundle small.
export CONTENTV_NVCC_FAST="${CONTENTV_NVCC_FAST:-1}"
B="$ROOT/.gpu-bundle"
rm -rf "$B"; mkdir -p "$B/bin"
msgs=$(cargo test --release --no-default-features --no-run --message-format=json 2>/dev/null)
benches=$(cargo build --release --no-default-features --benches --message-format=json 2>/dev/null || true)
bins=$(cargo build --release --no-default-features --bins --message-format=json 2>/dev/null)
printf '%s\n%s\n%s\n' "$msgs" "$benches" "$bins" | python3 -c '
import json, sys, shutil, os
out = sys.argv[1]
seen = set()
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"): continue
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"): continue
    t = m["target"]; kind = t["kind"][0]
    if kind == "lib" and not m["profile"]["test"]: continue
    name = ("test-" if m["profile"]["test"] else kind + "-") + t["name"]
    if kind == "lib": name = "test-lib"
    # CPU-only suites (they run in CI) stay home: the carry limit is 64 MiB with the repo.
    if kind == "bench": name = "bench-" + t["name"]
    if kind == "bin": name = "bin-" + t["name"]
    if name in ("test-cli", "test-safetensors_bad_files", "test-safetensors_props", "test-scheduler", "test-fixtures_smoke", "test-tokenizers", "test-tokenizer_fuzz", "test-parity_variants_pipeline", "bench-cpu_ops"): continue
    if name in seen: continue
    seen.add(name)
    shutil.copy(m["executable"], os.path.join(out, name))
    print(name)
' "$B/bin"
strip "$B"/bin/* 2>/dev/null || true
tar -C "$B" -cJf "$B/bin.tar.xz" bin && rm -rf "$B/bin"
# diffusers 0.33.1 (the reference's version) and its huggingface_hub for the PyTorch
# side-by-side; the GPU machine has torch and transformers but no diffusers. Optional.
mkdir -p "$B/whl"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d "$B/whl" diffusers==0.33.1 huggingface_hub==0.30.2 >/dev/null 2>&1 \
  || echo "warning: could not download the diffusers wheel; the torch 'block' and 'vae' sections will SKIP" >&2
cat > "$B/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the bundled GPU suite; see scripts/gpu-bundle.sh for PHASE, ONLY, BENCH_ONLY, TORCH_SECTIONS.
set -o pipefail
cd "$(dirname "$0")/.."
export CONTENTV_ROOT="$PWD"
PHASE="${PHASE:-all}"
# Unpacked outside the bundle, so a trial run here does not grow what the device tool carries.
BIN=/tmp/contentv-gpu-bundle; rm -rf "$BIN"; mkdir -p "$BIN"; tar -C "$BIN" -xJf .gpu-bundle/bin.tar.xz || exit 1
for d in $(python3 -c 'import nvidia, os; p=nvidia.__path__[0]; print(" ".join(os.path.join(p,x,"lib") for x in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
LOGS=/tmp/contentv-gpu-logs; rm -rf "$LOGS"; mkdir -p "$LOGS"
OUTDIR="${OUT:-/tmp/contentv-gpu}"; mkdir -p "$OUTDIR"
SUM="$OUTDIR/summary.txt"; : > "$SUM"
say() { echo "$@" | tee -a "$SUM"; }
say "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1); date: $(date -u +%FT%TZ); phase: $PHASE"
pass=(); fail=()
if [ "$PHASE" = all ] || [ "$PHASE" = tests ]; then
  for t in "$BIN"/bin/test-*; do
    n=$(basename "$t")
    if [ -n "${ONLY:-}" ] && ! echo "$n" | grep -qE "$ONLY"; then continue; fi
    echo "=== $n"; s0=$(date +%s)
    if timeout "${TEST_TIMEOUT:-300}" "$t" --test-threads=1 --nocapture > "$LOGS/$n.log" 2>&1; then pass+=("$n"); r=ok; else fail+=("$n"); r=FAILED; fi
    grep -E "^(test |SKIP|test result)|FAILED|panicked" "$LOGS/$n.log" | grep -v " ok$" | tail -n 25
    # every measured line the tests print (max errors, timings) goes to the summary too
    grep -E "err|max abs|cosine|PSNR| ms|GB/s|TFLOP" "$LOGS/$n.log" | grep -vE "^test .* ok$" | sed "s/^/$n: /" >> "$SUM"
    say "$n: $r in $(( $(date +%s) - s0 )) s"
  done
  # The binary end to end on the GPU, built-in tiny model, every memory mode (PNG frames: the
  # bundle is built without FFmpeg). Exit status, the --json summary and the stage timings.
  C="$BIN"/bin/bin-contentv
  if [ -x "$C" ] && { [ -z "${ONLY:-}" ] || echo cli | grep -qE "$ONLY"; }; then
    i=0
    for mode in "" "--offload model" "--offload sequential" "--quantize int8" "--offload sequential --quantize int8 --vae-tiling" "--vram-budget 1"; do
      i=$((i+1)); n="cli-$i"
      echo "=== contentv generate --device cuda $mode"
      if timeout 300 "$C" generate --device cuda --prompt "A young musician strumming an acoustic guitar" --seed 42 \
           --output "$LOGS/$n/out.mp4" --save-latents "$LOGS/$n/latents.safetensors" --json $mode > "$LOGS/$n.log" 2>&1; then
        pass+=("$n"); r=ok
      else
        fail+=("$n"); r=FAILED
      fi
      tail -n 4 "$LOGS/$n.log"
      say "$n (generate --device cuda $mode): $r; $(grep -oE '"(encode|denoise|per_step|decode|gpu_peak_reserved_bytes)": *[0-9.]+' "$LOGS/$n.log" | tr '\n' ' ')"
      rm -rf "$LOGS/$n"  # frames are noise; keep the log only
    done
  fi
fi
if [ "$PHASE" = all ] || [ "$PHASE" = bench ]; then
  for b in "$BIN"/bin/bench-*; do
    [ -x "$b" ] || continue
    n=$(basename "$b")
    if [ -n "${BENCH_ONLY:-}" ] && ! echo "$n" | grep -qE "$BENCH_ONLY"; then continue; fi
    echo "=== $n"; s0=$(date +%s)
    timeout "${BENCH_TIMEOUT:-240}" "$b" > "$LOGS/$n.log" 2>&1; rc=$?
    sed "s/^/$n: /" "$LOGS/$n.log" | grep -v "^$n: $" | tee -a "$SUM" | tail -n 60
    say "$n: exit $rc in $(( $(date +%s) - s0 )) s"
    [ $rc = 0 ] || fail+=("$n")
  done
fi
if [ "$PHASE" = all ] || [ "$PHASE" = torch ]; then
  PY="${PYTHON:-python3}"
  echo "=== torch side-by-side"
  # the sections without diffusers run on the machine's own packages
  T_PLAIN=$(echo "${TORCH_SECTIONS:-ceilings sdpa conv block vae t5}" | tr ' ' '\n' | grep -vE '^(block|vae)$' | tr '\n' ' ')
  T_DIFF=$(echo "${TORCH_SECTIONS:-ceilings sdpa conv block vae t5}" | tr ' ' '\n' | grep -E '^(block|vae)$' | tr '\n' ' ')
  if [ -n "${T_PLAIN// }" ]; then
    PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-400}" $PY scripts/gpu/torch_bench.py ${TORCH_ARGS:-} $T_PLAIN 2>&1 | tee "$LOGS/torch-plain.log" | sed 's/^/torch: /' | tee -a "$SUM" || fail+=(torch)
  fi
  if [ -n "${T_DIFF// }" ]; then
    rm -rf /tmp/contentv-site
    if ls .gpu-bundle/whl/*.whl >/dev/null 2>&1 && $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/contentv-site .gpu-bundle/whl/*.whl >/dev/null 2>&1; then
      PYTHONPATH=/tmp/contentv-site PYTHONUNBUFFERED=1 timeout "${TORCH_TIMEOUT:-400}" $PY scripts/gpu/torch_bench.py ${TORCH_ARGS:-} $T_DIFF 2>&1 | tee "$LOGS/torch-diffusers.log" | sed 's/^/torch: /' | tee -a "$SUM" || fail+=(torch-diffusers)
    else
      say "torch: SKIP $T_DIFF: diffusers wheel not bundled or not installable"
    fi
  fi
fi
tar -C "$LOGS" -czf "$OUTDIR/logs.tar.gz" . 2>/dev/null
say "GPU-SUITE ($PHASE): ${#pass[@]} test binaries passed, ${#fail[@]} failed: ${fail[*]:-none}"
RUN
chmod +x "$B/run.sh"
du -sh "$B"
