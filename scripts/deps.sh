#!/usr/bin/env bash
# Installs what a fresh Debian machine with only the Rust toolchain lacks.
#   scripts/deps.sh          what `contentv generate` needs (the README's main command, scripts/run.sh):
#     - FFmpeg dev libraries + pkg-config + clang (for ffmpeg-next's bindgen)
#     - python3-venv (for the pip CUDA toolchain)
#     - the pinned CUDA 12.9 kernel compiler (NVRTC) from PyPI wheels into .toolchain/cuda12
#       (scripts/install-cuda-toolchain.sh)
#   scripts/deps.sh --test   also what only the tests use (the README's test command, scripts/test.sh):
#     - ffmpeg (ffprobe reads the videos back)
#     - chromium + chromium-driver (the headless browser test of `contentv serve`'s page)
#   (The Python package's test venv, target/pyvenv, is made by scripts/test-python.sh.)
# Safe to run repeatedly: it only installs what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TEST=0
case "${1:-}" in
  "") ;;
  --test) TEST=1 ;;
  *) echo "deps.sh: unknown argument $1 (use no argument, or --test for the test tools too)" >&2; exit 2 ;;
esac
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
pkg-config --exists libavcodec libavformat libavutil libswscale 2>/dev/null || need+=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v clang >/dev/null || need+=(clang)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if [ "$TEST" = 1 ]; then
  command -v ffprobe >/dev/null || need+=(ffmpeg)
  # the browser test of `contentv serve`'s page (tests/serve.rs: page_in_a_real_browser)
  command -v chromium >/dev/null || need+=(chromium)
  command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
if [ "${#need[@]}" -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if [ "${CONTENTV_NO_CUDA_TOOLCHAIN:-0}" != 1 ]; then
  "$ROOT/scripts/install-cuda-toolchain.sh" >/dev/null
fi
