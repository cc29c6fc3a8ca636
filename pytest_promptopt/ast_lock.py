"""One `ast.parse` at a time in a process that runs cases on threads (CPython issue 106905).

CPython 3.11 (3.11.7 here) keeps the depth counter of the tree `ast.parse` builds per
interpreter, not per call. When two threads build trees at once, and a finalizer run by the
garbage collector lets the other thread in midway, the counter no longer balances and
`ast.parse` raises `SystemError: AST constructor recursion depth mismatch`. A run's call threads
build trees (Jinja reads a template's numbers with `ast.literal_eval`, a judge's answer written
as a Python dict is read with it) while pytest's main thread formats a failure's traceback with
`ast.parse`: the README's main job ended in INTERNALERROR in 2 of 6 warm runs. Every
`ast.parse` of the process (pytest's, Jinja's and `ast.literal_eval`'s go through it) takes one
lock once a session that runs cases exists. Compiling source to bytecode is not affected, and
the lock costs nothing measurable (a few parses per case at most).
"""

from __future__ import annotations

import ast
import functools
import threading
from typing import Any

__all__ = ["serialize_ast_parse"]

# Process-wide on purpose: the counter it protects is the interpreter's.
_LOCK = threading.RLock()


def serialize_ast_parse() -> None:
    """Make every later `ast.parse` in this process take `_LOCK` (idempotent; never undone, since
    threads a run started may still parse after it ends)."""
    original = ast.parse
    if getattr(original, "_promptopt_serialized", False):
        return

    @functools.wraps(original)
    def parse(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return original(*args, **kwargs)

    parse._promptopt_serialized = True  # type: ignore[attr-defined]
    ast.parse = parse
