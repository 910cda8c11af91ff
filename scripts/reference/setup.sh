#!/usr/bin/env bash
# Creates the reference Python environment in <repo>/.venv-ref (git-ignored) and installs the pinned packages.
# Usage: scripts/reference/setup.sh && .venv-ref/bin/python scripts/reference/make_fixtures.py
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/.venv-ref"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$ROOT/scripts/reference/requirements.txt"
# CLIPTokenizer switches to ftfy when it is importable; ContentV's environment has none, so make sure it is absent.
"$VENV/bin/python" -m pip uninstall -y -q ftfy >/dev/null 2>&1 || true
# The sentencepiece sdist (source only, never built) carries botchan.txt, the English test text that the small
# T5-style sentencepiece model of tokenizer_3 is trained on.
SPM_DIR="$VENV/spm-sdist"
if [ ! -f "$SPM_DIR/botchan.txt" ]; then
  mkdir -p "$SPM_DIR"
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary sentencepiece -d "$SPM_DIR" sentencepiece==0.2.3
  tar -xzf "$SPM_DIR/sentencepiece-0.2.3.tar.gz" -C "$SPM_DIR" sentencepiece-0.2.3/test/botchan.txt
  cp "$SPM_DIR/sentencepiece-0.2.3/test/botchan.txt" "$SPM_DIR/"
fi
# open-clip-torch's wheel carries OpenAI's CLIP BPE vocabulary (bpe_simple_vocab_16e6.txt.gz). Only that file is
# used, so the wheel is downloaded without its (heavy) dependencies and the file is extracted.
CLIP_DIR="$VENV/open-clip-wheel"
if [ ! -f "$CLIP_DIR/bpe_simple_vocab_16e6.txt.gz" ]; then
  mkdir -p "$CLIP_DIR"
  "$VENV/bin/python" -m pip download -q --no-deps -d "$CLIP_DIR" open-clip-torch==2.32.0
  "$VENV/bin/python" - "$CLIP_DIR" <<'PY'
import glob, sys, zipfile
d = sys.argv[1]
whl = glob.glob(d + "/open_clip_torch-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    open(d + "/bpe_simple_vocab_16e6.txt.gz", "wb").write(z.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
PY
fi
echo "reference venv ready: $VENV"
