#!/usr/bin/env bash
# Install the peer tools that bench/harness_overhead.py compares against, each in its own
# environment under bench/.peers/ (ignored by git), so none of them touches the project's .venv:
#   bench/.peers/deepeval    a Python venv with deepeval
#   bench/.peers/promptfoo   an npm prefix with promptfoo (the version tests/data/promptfoo pins)
# Usage: bash bench/peers/setup.sh [deepeval] [promptfoo]   (default: both)
# A peer that fails to install is reported and skipped; the benchmark then says why it skipped it.
set -uo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PEERS="$HERE/.peers"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
DEEPEVAL_VERSION="${DEEPEVAL_VERSION:-}"          # empty: the newest on PyPI
PF_VERSION="${PF_VERSION:-0.121.20}"              # as in tests/data/promptfoo/regenerate.sh
mkdir -p "$PEERS"
printf '*\n' > "$PEERS/.gitignore"
want="${*:-deepeval promptfoo}"
status=0

if [[ " $want " == *" deepeval "* ]]; then
  if [ ! -x "$PEERS/deepeval/bin/deepeval" ]; then
    echo "installing deepeval${DEEPEVAL_VERSION:+==$DEEPEVAL_VERSION} into $PEERS/deepeval"
    "$PYTHON" -m venv "$PEERS/deepeval" \
      && "$PEERS/deepeval/bin/python" -m pip install -q "deepeval${DEEPEVAL_VERSION:+==$DEEPEVAL_VERSION}" \
      || { echo "deepeval: install failed" >&2; status=1; }
  fi
  "$PEERS/deepeval/bin/python" -c "import importlib.metadata as m; print('deepeval', m.version('deepeval'))" || status=1
fi

if [[ " $want " == *" promptfoo "* ]]; then
  if [ ! -x "$PEERS/promptfoo/node_modules/.bin/promptfoo" ]; then
    echo "installing promptfoo@$PF_VERSION into $PEERS/promptfoo"
    mkdir -p "$PEERS/promptfoo"
    npm install --prefix "$PEERS/promptfoo" "promptfoo@$PF_VERSION" --no-audit --no-fund --loglevel=error \
      || { echo "promptfoo: install failed" >&2; status=1; }
  fi
  echo "promptfoo $(PROMPTFOO_DISABLE_TELEMETRY=1 PROMPTFOO_DISABLE_UPDATE=1 "$PEERS/promptfoo/node_modules/.bin/promptfoo" --version 2>/dev/null | tail -1)" || status=1
fi
exit $status
