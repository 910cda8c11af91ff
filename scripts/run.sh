#!/usr/bin/env bash
# The main job (README): installs what is missing, builds, and runs `contentv` with the given
# arguments, e.g.  scripts/run.sh generate --prompt "a red fox in the snow"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
scripts/deps.sh
cargo build --release --quiet
exec "$ROOT/target/release/contentv" "$@"
