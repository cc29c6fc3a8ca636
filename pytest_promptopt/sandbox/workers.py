"""Long-lived child processes that run user code (Python through `py_runner.py`, JavaScript
modules through node and `js_runner.mjs`): one JSON request and one JSON reply per line.

A worker answers one request at a time; a pool hands an idle one to each caller (the runner grades
cases on several threads) and starts another when none is idle. A call that outlives its time
limit kills its worker (the next call starts a fresh one), so code that never returns costs its
time limit and nothing more; a worker that dies mid-call (`os._exit`, a crash) ends only that call.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import Any

from .errors import ScriptFault, ScriptTimeout

__all__ = ["STARTUP_TIMEOUT_S", "Worker", "WorkerPool"]

STARTUP_TIMEOUT_S = 60.0  # a child's start-up, not counted in a call's time limit


class _Stale(ScriptFault):
    """The worker was dead before the request reached it."""


class Worker:
    """One child process; `call` sends a request and waits for its reply, at most `timeout` s."""

    def __init__(self, argv: Sequence[str], marker: str = "", cwd: str | None = None) -> None:
        self.marker = marker
        self.argv0 = argv[0]
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # the user's prints: promptfoo keeps them out of results too
            cwd=cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # A process group of its own: `kill` ends the processes the user's code started too.
            start_new_session=True,
        )
        self._replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="promptopt-script-reader", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self.marker and not line.startswith(self.marker):
                continue  # something the user's code wrote straight to stdout
            self._replies.put(line[len(self.marker) :])
        self._replies.put(None)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self, timeout: float, what: str) -> None:
        """Wait for the child's first line (it is up): starting an interpreter is not the code's
        time, and on a loaded machine it can take longer than a check's whole limit."""
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise ScriptFault(f"{what}: {self.argv0} did not start within {timeout:g} s") from None
        if line is None:
            self._end_group()
            code = self.proc.wait()
            raise ScriptFault(f"{what}: {self.argv0} exited at start (exit status {code})")

    def call(self, request: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(request, ensure_ascii=False, allow_nan=True) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise _Stale(f"{what}: the script process had ended before the call") from None
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise ScriptTimeout(f"{what} did not return within {timeout:g} s (--promptopt-script-timeout)") from None
        if line is None:
            self._end_group()  # what the code started goes too (`os._exit` after a Popen)
            code = self.proc.wait()
            raise ScriptFault(f"{what} ended its process (exit status {code}) without returning")
        return json.loads(line)

    def _end_group(self) -> None:
        """Kill the worker's process group: the worker and whatever the user's code started. Only
        before the worker is reaped (until then its pid, the group's id, cannot be reused)."""
        if self.proc.returncode is None and hasattr(os, "killpg"):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        """End the worker and whatever the user's code started in it (its process group)."""
        self._end_group()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


class WorkerPool:
    """Idle workers of one command line, handed out one caller at a time."""

    def __init__(self, argv: Sequence[str], marker: str = "") -> None:
        self.argv = list(argv)
        self.marker = marker
        self._idle: list[Worker] = []
        # Workers answering a call: `close` kills them too. They are in process groups of their
        # own, so Ctrl-C does not reach them; a call thread waiting on one (a check in an endless
        # loop) would otherwise hold the run's end for the whole time limit.
        self._busy: set[Worker] = set()
        self._lock = threading.Lock()
        self._closed = False

    def call(self, request: dict[str, Any], timeout: float, what: str) -> dict[str, Any]:
        for attempt in (1, 2):
            with self._lock:
                if self._closed:
                    raise ScriptFault(f"{what}: the run is over")
                worker = self._idle.pop() if self._idle else None
            fresh = worker is None
            if worker is None:
                try:
                    worker = Worker(self.argv, self.marker)
                except OSError as exc:
                    raise ScriptFault(f"{what}: cannot start {self.argv[0]}: {exc.strerror or exc}") from None
            with self._lock:
                closed = self._closed
                if not closed:
                    self._busy.add(worker)
            if closed:
                worker.kill()
                raise ScriptFault(f"{what}: the run is over")
            try:
                if fresh:
                    worker.ready(STARTUP_TIMEOUT_S, what)
                reply = worker.call(request, timeout, what)
            except _Stale:
                worker.kill()
                if attempt == 1:
                    continue  # an idle worker had died before this call, which it never saw
                raise
            except BaseException:  # a fault, or pytest-timeout / Ctrl-C while the code still runs in it
                worker.kill()
                raise
            finally:
                with self._lock:
                    self._busy.discard(worker)
            with self._lock:
                if self._closed:
                    worker.kill()
                else:
                    self._idle.append(worker)
            return reply
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Kill every worker, the idle ones and those still answering (their callers get a fault)."""
        with self._lock:
            self._closed = True
            workers, self._idle = [*self._idle, *self._busy], []
        for worker in workers:
            worker.kill()
