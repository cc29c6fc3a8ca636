"""A first run prepares the bundled model's weights in a child process while pytest collects.

Preparing them (dequantising the GGUF, converting it for CTranslate2: ~30 s on 2 cores) used to
start at the first case, after collection had converted the offline embedder of `similar` (~6 s).
A child process does it beside collection instead: a process, not a thread, because both are CPU
work that would share one GIL, and warnings raised in a thread would land on whichever test pytest
is running.

The child is started holding the preparation lock (`local_weights.lock_path`, the lock two runs
preparing at once share): this process takes it, hands the open file to the child and closes its
own copy, so no case can start a second preparation before the child is up, and the lock goes
when the child ends, however it ends. The first case that needs the model waits on that lock,
saying on the progress line what the wait is for, and loads the copy the child made. If the child
fails, the wait ends and the run prepares the weights itself, so the error reaches the cases as
before. The session stops a child still running when it closes, after its cases are done (a run
that never needed the model; a case that waits keeps the child's work, even in an interrupted
run): the child removes its temporary folder, and the next run starts over.

Run by `PreparationAhead.start` (`main()`, arguments GGUF, CACHE_ROOT, ctranslate2|float32), with
the lock already held.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .local_weights import build_holding_lock, is_prepared, lock_path
from .prepared_files import locked_if_free

__all__ = ["PreparationAhead", "main"]

_STOP_WAIT_S = 30.0
_KINDS = {True: "ctranslate2", False: "float32"}


class PreparationAhead:
    """The child process preparing the weights."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(cls, gguf: Path, cache_root: Path, *, ctranslate2: bool) -> PreparationAhead | None:
        """Start preparing in a child process; None when the cache already holds the weights,
        another process is preparing them, or the cache cannot be written (each process then
        prepares a private copy, nothing to share), or no process can be started (the first
        case prepares them, as without this)."""
        if is_prepared(gguf, cache_root, ctranslate2=ctranslate2):
            return None
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            with locked_if_free(lock_path(gguf, cache_root)) as lock:
                return None if lock is None else cls(_spawn(gguf, cache_root, ctranslate2, lock.fileno()))
        except OSError:
            return None

    def stop(self) -> None:
        """Stop the child if it is still preparing: SIGINT lets it remove its temporary folder.
        A second Ctrl-C while waiting for it kills it, and the session goes on closing."""
        if self.process.poll() is not None:
            return
        try:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(_STOP_WAIT_S)
        except (OSError, ValueError, subprocess.TimeoutExpired, KeyboardInterrupt):
            self.process.kill()
            self.process.wait()


def _spawn(gguf: Path, cache_root: Path, ctranslate2: bool, lock_fd: int) -> subprocess.Popen[bytes]:
    """The child, given the open lock file `lock_fd`: it holds the lock from here on."""
    # This checkout first on the path, as MLflow's writer does: a project folder named like one
    # of our modules, or a plugin found only through pytest's `pythonpath`, must not decide what
    # the child runs.
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    code = (
        f"import sys; sys.path.insert(0, {package_root!r}); "
        "from pytest_promptopt.models import preparing_ahead; del sys.path[0]; preparing_ahead.main()"
    )
    # One thread: it shares the cores with collection (the embedder's conversion, MLflow's
    # writer), where OpenMP threads lose more than they gain. Its output is not shown: if it
    # fails, the run's own preparation fails the same way, in the cases.
    return subprocess.Popen(
        [sys.executable, "-c", code, str(gguf), str(cache_root), _KINDS[ctranslate2]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
        pass_fds=(lock_fd,),
    )


def main() -> None:
    """The child: `sys.argv[1:]` = GGUF, CACHE_ROOT, ctranslate2|float32; the lock is held."""
    # pytest started in the background of a shell (`pytest ... &` in a CI script) ignores SIGINT,
    # and a child inherits that: without Python's handler back, `stop` could not interrupt it.
    # SIGTERM (the whole run stopped: `docker stop`, a cancelled CI job) would end it at once,
    # leaving a half-written copy of up to 1 GB in the home: it stops it the same way.
    stopped: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        # Once only: a group SIGTERM reaches this child and pytest, whose session then sends
        # SIGINT too; a second KeyboardInterrupt would skip the removal of the temporary folder.
        if stopped:
            return
        stopped.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    gguf, cache_root, kind = sys.argv[1:]
    try:
        build_holding_lock(Path(gguf), Path(cache_root), ctranslate2=kind == _KINDS[True])
    except BaseException:
        # Stopped by the session: its temporary folder is gone, nothing to say. The interrupt may
        # surface as another error: one during an extension's import (ctranslate2's) becomes
        # "ImportError: initialization failed".
        if stopped:
            sys.exit(130)
        raise
