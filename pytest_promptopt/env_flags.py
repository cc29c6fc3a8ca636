"""promptfoo's boolean environment switches, read the way its `getEnvBool` reads them."""

from __future__ import annotations

import os

__all__ = ["promptfoo_env_bool"]

_TRUE = ("1", "true", "yes", "yup", "yeppers")  # promptfoo's getEnvBool


def promptfoo_env_bool(name: str) -> bool:
    """Whether the environment variable `name` is set to one of promptfoo's true words."""
    return os.environ.get(name, "").strip().lower() in _TRUE
