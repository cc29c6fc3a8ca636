"""SIGTERM stops a run, or `serve`, as Ctrl-C does.

Python ends at once on SIGTERM (`timeout`, `docker stop`, a CI job's cancel or time limit): no
`finally` and no exit handler runs. A `pytest --promptopt` run then reported none of the cases
that had finished (no JSON report, no MLflow run) and left behind what it cleans up on the way
out: the sandbox's workers, a private copy of the bundled model, its registry pin. Raised as
`KeyboardInterrupt` in the main thread, SIGTERM takes Ctrl-C's path instead (docs/faults.md).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["interrupt_on_sigterm"]


def interrupt_on_sigterm() -> Callable[[], None]:
    """From now on SIGTERM raises KeyboardInterrupt in the main thread. Only on the main thread
    and where SIGTERM still has its default action: a handler installed by someone else, or a
    SIGTERM the process was started ignoring, is left alone. Returns what gives SIGTERM its
    default action back (once; a no-op when nothing was installed or it was replaced since)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return lambda: None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return restore
