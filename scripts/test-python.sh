#!/usr/bin/env bash
# The Python package's tests (python/tests, pytest), the last step of scripts/test.sh:
#   1. a venv in target/pyvenv with the pinned build and test tools (made once, kept);
#   2. the wheel, built once per run with maturin from the shared target folder (so cargo
#      reuses the engine's artefacts), installed into the venv;
#   3. pytest on the machine's device (the GPU if there is one, else the CPU);
#   4. without a GPU, pytest again on the emulated CUDA device (scripts/emu-device.sh), unless
#      CONTENTV_SKIP_EMU_DEVICE=1.
# pytest's exit status 5 (no test collected) counts as a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/target/pyvenv"
PY="$VENV/bin/python"
# Pinned: the build backend (also python/pyproject.toml's) and the test tools.
PIP_PINS=(maturin==1.16.0 pytest==9.2.0 numpy==2.4.6 pillow==13.0.0 tqdm==4.70.1)
if [ ! -x "$PY" ] || [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PIP_PINS[*]}" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check "${PIP_PINS[@]}"
  echo "${PIP_PINS[*]}" > "$VENV/.pins"
fi
t0=$(date +%s)
rm -rf target/wheels
"$PY" -m maturin build --release -m python/Cargo.toml -o target/wheels
"$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/contentv-*.whl
t1=$(date +%s)
echo "python: wheel built and installed in $((t1 - t0)) s"

run_pytest() {
  local rc=0
  (cd python/tests && "$PY" -m pytest -q -p no:cacheprovider -rs "$@") || rc=$?
  if [ "$rc" = 5 ]; then echo "python: pytest collected no test" >&2; return 1; fi
  return "$rc"
}
run_pytest
t2=$(date +%s)
echo "python: tests on $("$PY" -c 'import contentv._engine as e; print("the GPU" if e.device_memory() is not None else "the CPU")') in $((t2 - t1)) s"
if [ "${CONTENTV_SKIP_EMU_DEVICE:-0}" != 1 ] && "$PY" -c 'import sys, contentv._engine as e; sys.exit(e.device_memory() is not None)'; then
  echo "---- the Python package on the emulated CUDA device (not a GPU: nothing measured here is a GPU number) ----"
  # scripts/test.sh passes the emulated device it built; alone, this builds it.
  EMU="${CONTENTV_EMU_DEVICE_LIB:-}"
  [ -n "$EMU" ] || EMU="$(scripts/emu-device.sh)"
  CONTENTV_PY_EMU=1 LD_LIBRARY_PATH="$EMU" run_pytest -m emu
  echo "python: tests on the emulated GPU in $(($(date +%s) - t2)) s"
fi
