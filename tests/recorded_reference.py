"""transformers' own results, recorded, for the tests that compare the plugin with them.

Two tests compare the plugin's bundled model with transformers float32, the reference: the
CTranslate2 runtime's answers on the README's main job (tests/test_examples.py) and the weights
the preparation dequantises with one GGUF parse (tests/test_bundled_model.py). transformers'
side is the same every time for the same inputs, and made up about 45 s and 15 s of the suite
(docs/performance.md, "The project's test suite"), so it is recorded in
`tests/data/transformers_reference/`, each recording with what determines it (`inputs()`): the
versions of the libraries the answers and weights go through, the machine's architecture, the
GGUF's SHA-256 and the SHA-256 of the plugin's modules on that path. When any of them differs
the recording is not used: the test computes transformers' side live, as it did before
recordings, and warns that the recording is stale. With `PROMPTOPT_TESTS_RECORD=1` no recording
is used and the tests write what they computed live (DEVELOPERS.md). The main job's test also
answers the first case of each suite with transformers every time and checks the recording
against it (the transformers runtime, the plugin's fallback, stays exercised); the weights test
runs the plugin's one parse every time and reads transformers' own three parses from the
recording.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest_promptopt.models as models_package
from pytest_promptopt.models import local_weights

RECORDINGS = Path(__file__).parent / "data" / "transformers_reference"
RECORD_VARIABLE = "PROMPTOPT_TESTS_RECORD"
# What the bundled model's answers and weights are made by, besides the libraries: the modules
# of pytest_promptopt/models that the transformers runtime's path imports.
_MODULES = ("base.py", "cpu.py", "local.py", "local_runtimes.py", "local_weights.py", "prepared_files.py")
_LIBRARIES = ("torch", "transformers", "tokenizers", "gguf", "safetensors", "numpy", "jinja2")


def inputs() -> dict[str, str]:
    """Everything a recording depends on, as recorded beside it."""
    found: dict[str, str] = {name: version(name) for name in _LIBRARIES}
    found["machine"] = platform.machine()
    found["gguf_sha256"] = local_weights._sha256(local_weights.locate_gguf())
    folder = Path(models_package.__file__).parent
    for name in _MODULES:
        found[f"pytest_promptopt/models/{name}"] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return found


class StaleRecording(UserWarning):
    """A recording made with other inputs: the test computed transformers' side live."""


def recorded(name: str) -> Any | None:
    """The recording `name`, or None: when recording (`PROMPTOPT_TESTS_RECORD=1`), or (with a
    warning) when it is missing or was made with other inputs."""
    if recording():
        return None
    path = RECORDINGS / f"{name}.json"
    if not path.is_file():
        warnings.warn(StaleRecording(f"{path} is missing: computed live; {_how_to_record()}"), stacklevel=2)
        return None
    stored = json.loads(path.read_text(encoding="utf-8"))
    now = inputs()
    changed = sorted(key for key in now if stored["inputs"].get(key) != now[key])
    if changed:
        warnings.warn(
            StaleRecording(f"{path} was recorded with another {', '.join(changed)}: computed live; {_how_to_record()}"),
            stacklevel=2,
        )
        return None
    return stored["data"]


def recording() -> bool:
    """Whether this run records (`PROMPTOPT_TESTS_RECORD=1`): everything is computed live."""
    return os.environ.get(RECORD_VARIABLE) == "1"


def record_if_asked(name: str, data: Any) -> None:
    """Write what a test computed live as the recording `name`, when PROMPTOPT_TESTS_RECORD=1."""
    if not recording():
        return
    RECORDINGS.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"inputs": inputs(), "data": data}, indent=1, ensure_ascii=False, sort_keys=True)
    (RECORDINGS / f"{name}.json").write_text(text + "\n", encoding="utf-8")


def stale(message: str) -> None:
    """Warn that part of a recording could not be used (it was computed live)."""
    warnings.warn(StaleRecording(f"{message}; {_how_to_record()}"), stacklevel=2)


def _how_to_record() -> str:
    return f"run the test with {RECORD_VARIABLE}=1 to record it again (DEVELOPERS.md)"
