"""Heavy imports with Python's cyclic garbage collector paused.

Importing litellm or mlflow makes hundreds of thousands of objects that live as long as the
process (modules, classes, functions, pydantic models), and the collector walks them again and
again while they are being made: 15-20% of the import (litellm 3.75 -> 2.98 s of CPU here, mlflow
with its SQL stores 1.81 -> 1.54 s; docs/performance.md#heavy-imports-without-the-collector).
Nothing an import makes is garbage worth collecting early, so the collector waits for the end.
The bundled model's first-run preparation gets the same, and more (`existing_objects_frozen`).
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

__all__ = ["existing_objects_frozen", "gc_paused", "paused_for_first_import"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The collector off for the block, then as it was. Process-wide: other threads' garbage
    waits too, for the seconds of an import or of the bundled model's GGUF parse; nested blocks
    leave it to the outermost."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def paused_for_first_import(module: str) -> contextlib.AbstractContextManager[None]:
    """`gc_paused()` around the import of `module` when it is not imported yet; nothing later
    (the import then costs a dict lookup, and the collector is left alone)."""
    return gc_paused() if module not in sys.modules else contextlib.nullcontext()


@contextlib.contextmanager
def existing_objects_frozen() -> Iterator[None]:
    """In the block, collections walk only the objects made in it: for library code that calls
    `gc.collect()` itself, again and again. CTranslate2's converters collect after each layer
    they convert (to free a large model's memory early), and with torch, transformers and the
    model's tokenizer loaded each of those collections walks millions of objects: with the GGUF's
    parse, the collector took 9.0 of the 29.8 s of the bundled model's first-run preparation
    (docs/performance.md). The objects that existed before go back to the collector afterwards
    (`gc.unfreeze`). Process-wide: what other threads made before the block is skipped too, until
    it ends. A process that froze objects itself keeps its own choice: the block then changes
    nothing."""
    if gc.get_freeze_count():  # unfreezing would hand back what the process froze for itself
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
