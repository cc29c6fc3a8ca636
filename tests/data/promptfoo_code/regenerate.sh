#!/usr/bin/env bash
# Record promptfoo's verdicts for every folder here (expected.json beside each config).
# Needs promptfoo 0.121.20 (npm) and node >= 20.20; runs offline (echo provider). Not run by CI.
# Usage: bash tests/data/promptfoo_code/regenerate.sh [PF_DIR]   (PF_DIR as in ../promptfoo/regenerate.sh)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PF_DIR="${1:-/tmp/pf}"
PF_VERSION="${PF_VERSION:-0.121.20}"
if [ ! -x "$PF_DIR/node_modules/.bin/promptfoo" ]; then
  mkdir -p "$PF_DIR" && (cd "$PF_DIR" && npm init -y >/dev/null && npm install "promptfoo@$PF_VERSION" --no-audit --no-fund)
fi
export PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 PROMPTFOO_DISABLE_SHARING=1 \
       PROMPTFOO_DISABLE_REMOTE_GENERATION=1 PROMPTFOO_CONFIG_DIR="$PF_DIR/home" NO_COLOR=1
version="$("$PF_DIR/node_modules/.bin/promptfoo" --version 2>/dev/null | tail -1)"
for dir in "$HERE"/*/; do
  [ -f "$dir/promptfooconfig.yaml" ] || continue
  rc=0
  (cd "$dir" && "$PF_DIR/node_modules/.bin/promptfoo" eval -c promptfooconfig.yaml -o "$PF_DIR/out.json" \
      --no-cache --no-progress-bar --no-write --no-share --no-table -j 1 >"$PF_DIR/log.txt" 2>&1) || rc=$?
  # promptfoo exits 100 when some tests fail (expected here); anything else is an error.
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 100 ]; then cat "$PF_DIR/log.txt"; exit "$rc"; fi
  python3 "$HERE/extract.py" "$PF_DIR/out.json" "$dir/expected.json" "$version"
  echo "$(basename "$dir"): $(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['results']))" "$dir/expected.json") results"
done
