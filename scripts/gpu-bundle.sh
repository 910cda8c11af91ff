#!/usr/bin/env bash
# Builds every test and benchmark binary (without the ffmpeg feature, so the GPU machine needs
# no FFmpeg libraries) into .gpu-bundle/ (git-ignored) with a runner script, so the whole GPU
# suite runs on a machine that has a GPU but no Rust toolchain:
#
#   here:   scripts/gpu-bundle.sh
#   there:  .gpu-bundle/run.sh            (from the repo root; prints a pass/fail summary last)
#
# The runner points LD_LIBRARY_PATH at PyTorch's nvidia wheels (cuBLAS, cuDNN) when present.
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
    if name in ("test-cli", "test-safetensors_bad_files", "test-safetensors_props", "test-scheduler", "test-fixtures_smoke", "test-tokenizers", "test-parity_variants_pipeline", "bench-cpu_ops"): continue
    if name in seen: continue
    seen.add(name)
    shutil.copy(m["executable"], os.path.join(out, name))
    print(name)
' "$B/bin"
strip "$B"/bin/* 2>/dev/null || true
tar -C "$B" -cJf "$B/bin.tar.xz" bin && rm -rf "$B/bin"
cat > "$B/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every bundled test binary, then the GPU benchmarks; summary last.
cd "$(dirname "$0")/.."
export CONTENTV_ROOT="$PWD"
[ -d .gpu-bundle/bin ] || tar -C .gpu-bundle -xJf .gpu-bundle/bin.tar.xz
for d in $(python3 -c 'import nvidia, os; p=nvidia.__path__[0]; print(" ".join(os.path.join(p,x,"lib") for x in os.listdir(p)))' 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
OUTDIR="${OUT:-/tmp/contentv-gpu}"; mkdir -p "$OUTDIR"
pass=(); fail=()
for t in .gpu-bundle/bin/test-*; do
  n=$(basename "$t")
  if [ -n "${ONLY:-}" ] && ! echo "$n" | grep -qE "$ONLY"; then continue; fi
  echo "=== $n"
  if timeout "${TEST_TIMEOUT:-300}" "$t" --test-threads=1 --nocapture > "$OUTDIR/$n.log" 2>&1; then pass+=("$n"); else fail+=("$n"); fi
  grep -E "^(test |SKIP|test result)|FAILED|panicked" "$OUTDIR/$n.log" | grep -v " ok$" | tail -n 25
done
if [ "${BENCH:-1}" = 1 ]; then
  for b in .gpu-bundle/bin/bench-*; do
    [ -x "$b" ] || continue
    echo "=== $(basename $b)"; timeout "${BENCH_TIMEOUT:-240}" "$b" 2>&1 | tee "$OUTDIR/$(basename $b).log" | tail -n 60
  done
fi
echo "GPU-SUITE: ${#pass[@]} binaries passed, ${#fail[@]} failed: ${fail[*]:-none}"
RUN
chmod +x "$B/run.sh"
du -sh "$B"
