#!/usr/bin/env bash
# Record what the real promptfoo does with each small config in this folder (one folder each):
# writes <folder>/expected.json, read by tests/test_promptfoo_format.py. Not run by CI.
# Usage: bash tests/data/promptfoo-format/regenerate.sh [PF_DIR]   (promptfoo 0.121.20 under PF_DIR;
# bench/peers/setup.sh promptfoo installs it under bench/.peers/promptfoo)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PF_DIR="${1:-/tmp/pf}"
PF="$PF_DIR/node_modules/.bin/promptfoo"
[ -x "$PF" ] || { echo "no promptfoo at $PF: run bench/peers/setup.sh promptfoo or pass its prefix" >&2; exit 2; }
export PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 PROMPTFOO_DISABLE_SHARING=1 \
       PROMPTFOO_DISABLE_REMOTE_GENERATION=1 PROMPTFOO_CONFIG_DIR="$(mktemp -d)" NO_COLOR=1
version="$("$PF" --version 2>/dev/null | tail -1)"
for dir in "$HERE"/*/; do
  name="$(basename "$dir")"
  work="$(mktemp -d)"
  cp -r "$dir". "$work/"
  rm -f "$work/expected.json"
  rc=0
  (cd "$work" && "$PF" eval -c promptfooconfig.yaml -o out.json --no-cache --no-progress-bar --no-write \
      --no-share --no-table -j 1 > log.txt 2>&1) || rc=$?
  # promptfoo exits 100 when some tests fail; anything else without results is a refused config
  python3 "$HERE/extract_expected.py" "$work" "$dir/expected.json" "$version" "$rc"
  echo "$name: rc=$rc"
  rm -rf "$work"
done
