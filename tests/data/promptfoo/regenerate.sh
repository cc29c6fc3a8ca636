#!/usr/bin/env bash
# Regenerate expected.json with the real promptfoo (needs npm registry access + node >= 20.20).
# Not run by CI. Usage: bash tests/data/promptfoo/regenerate.sh [PF_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PF_DIR="${1:-/tmp/pf}"
PF_VERSION="${PF_VERSION:-0.121.20}"
mkdir -p "$PF_DIR"
if [ ! -x "$PF_DIR/node_modules/.bin/promptfoo" ]; then
  (cd "$PF_DIR" && npm init -y >/dev/null && npm install "promptfoo@$PF_VERSION" --no-audit --no-fund)
fi
export PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 PROMPTFOO_DISABLE_SHARING=1 \
       PROMPTFOO_DISABLE_REMOTE_GENERATION=1 PROMPTFOO_CONFIG_DIR="$PF_DIR/home" NO_COLOR=1
cd "$HERE"
rc=0
"$PF_DIR/node_modules/.bin/promptfoo" eval -c promptfooconfig.yaml -o "$PF_DIR/out.json" \
  --no-cache --no-progress-bar --no-write --no-share --no-table -j 1 || rc=$?
# promptfoo exits 100 when some tests fail (expected here); anything else is an error.
if [ "$rc" -ne 0 ] && [ "$rc" -ne 100 ]; then exit "$rc"; fi
version="$("$PF_DIR/node_modules/.bin/promptfoo" --version 2>/dev/null | tail -1)"
python3 extract_expected.py "$PF_DIR/out.json" expected.json "$version"
