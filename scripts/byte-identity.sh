#!/usr/bin/env bash
# Byte identity of the tiny model's outputs across a change: records (or compares against) the
# latents and videos of `contentv generate` in every memory mode and `contentv decode`, on the
# CPU and on the CUDA device (the real GPU or, without one, the emulated device of
# scripts/emu-device.sh).
#   scripts/byte-identity.sh record  DIR [BIN]   # before the change: writes DIR/{cpu,cuda}/...
#   scripts/byte-identity.sh compare DIR [BIN]   # after: the same runs into a scratch folder, cmp
# BIN defaults to target/release/contentv. CONTENTV_BYTE_DEVICES="cpu cuda" picks the devices
# (default: both; cuda uses the emulated device when no driver is found); CONTENTV_BYTE_ONLY="a b"
# runs only the named runs (resident, model, ..., decode-resident; see MODES below). The tiny
# model has 2 layers, so no budget streams only some of them (the ring of two slots costs more
# than keeping a layer): --vram-budget 1 runs the budgeted planner with every layer resident;
# --offload sequential streams them all. Exit status 1 when any
# file differs or a run fails. Runs are small (9 frames of 48x32, 2 steps) but the emulated
# device makes the cuda half take minutes.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="${1:?usage: $0 record|compare DIR [BIN]}"
REF="${2:?usage: $0 record|compare DIR [BIN]}"
BIN="${3:-$ROOT/target/release/contentv}"
DEVICES="${CONTENTV_BYTE_DEVICES:-cpu cuda}"
case "$MODE" in record) OUT="$REF" ;; compare) OUT="$(mktemp -d)" ;; *) echo "mode: record|compare" >&2; exit 2 ;; esac
[ -x "$BIN" ] || { echo "no binary $BIN (cargo build --release --bin contentv)" >&2; exit 2; }

# name | extra flags
MODES=(
  "resident|"
  "model|--offload model"
  "sequential|--offload sequential"
  "budget|--vram-budget 1"
  "int8|--quantize int8"
  "int8-seq|--quantize int8 --offload sequential"
  "tiled|--vae-tiling"
  "vae-bf16|--vae-precision bf16"
  "vae-f32|--vae-precision f32"
)
fail=0
run() { # dir name args...
  local dir="$1" name="$2"; shift 2
  if ! "$@" >"$dir/$name.log" 2>&1; then
    echo "FAIL: $name: $* (see $dir/$name.log)"; tail -5 "$dir/$name.log"; fail=1
  fi
}
only() { [ -z "${CONTENTV_BYTE_ONLY:-}" ] || case " $CONTENTV_BYTE_ONLY " in *" $1 "*) ;; *) return 1 ;; esac; }
for dev in $DEVICES; do
  d="$OUT/$dev"; mkdir -p "$d"
  envs=()
  if [ "$dev" = cpu ]; then
    envs=(env CONTENTV_FORCE_CPU=1)
  elif [ -z "${LD_LIBRARY_PATH:-}" ] || ! ls "${LD_LIBRARY_PATH%%:*}"/libcuda.so* >/dev/null 2>&1; then
    if ! ldconfig -p 2>/dev/null | grep -q libcuda.so; then
      envs=(env "LD_LIBRARY_PATH=$("$ROOT/scripts/emu-device.sh")")
    fi
  fi
  for m in "${MODES[@]}"; do
    name="${m%%|*}"; extra="${m#*|}"
    only "$name" || continue
    # shellcheck disable=SC2086
    run "$d" "$name" "${envs[@]}" "$BIN" generate --device "$dev" --prompt "a red ball bouncing" \
      --frames 9 --width 48 --height 32 --steps 2 --fps 12 --seed 77 \
      --output "$d/$name.mp4" --save-latents "$d/$name.latents.safetensors" $extra
  done
  for m in "resident|" "tiled|--vae-tiling" "model|--offload model"; do
    name="${m%%|*}"; extra="${m#*|}"
    only "decode-$name" || continue
    # shellcheck disable=SC2086
    run "$d" "decode-$name" "${envs[@]}" "$BIN" decode --device "$dev" \
      --latents "$d/resident.latents.safetensors" --output "$d/decode-$name.mp4" $extra
  done
done
if [ "$MODE" = record ]; then
  (cd "$OUT" && find . -type f ! -name '*.log' ! -name SHA256SUMS | sort | xargs sha256sum) > "$OUT/SHA256SUMS"
  echo "recorded $(wc -l < "$OUT/SHA256SUMS") files in $OUT"
  exit $fail
fi
n=0
while read -r _ f; do
  dev="${f#./}"; dev="${dev%%/*}"
  case " $DEVICES " in *" $dev "*) ;; *) continue ;; esac
  base="${f##*/}"; base="${base%%.*}"
  only "$base" || continue
  n=$((n + 1))
  if [ ! -e "$OUT/$f" ]; then echo "MISSING: $f"; fail=1
  elif ! cmp -s "$REF/$f" "$OUT/$f"; then echo "DIFFERS: $f"; fail=1
  else echo "same: $f"; fi
done < "$REF/SHA256SUMS"
[ $fail = 0 ] && echo "byte-identical: $n files (outputs in $OUT)" || echo "NOT byte-identical (outputs in $OUT)"
exit $fail
