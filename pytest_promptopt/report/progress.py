"""The progress line of a long run: `promptopt: 120/400 tests done, 95 model calls, 25 cache hits, 3 errors, 1m02s`.

Registered in the controller only (never in an xdist worker), and only when the progress line
is on and pytest is not quiet (`-q`, `-qq`). At most one line per interval, written after each
test's teardown report, on a line of its own: pytest's current line of dots is ended first, and
pytest starts a fresh line (with the file name) for the next result.

A long wait in this process also gets a line when it starts, saying what it is for: the records
of the `pytest_promptopt.status` logger (`promptopt: preparing the bundled model (first run: ...)`,
models/base.announce). Under xdist the wait happens in a worker and shows no line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from ..models.base import STATUS_LOGGER
from ..wording import counted

__all__ = ["ProgressLine"]


class _StatusHandler(logging.Handler):
    def __init__(self, line: ProgressLine) -> None:
        super().__init__(logging.INFO)
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "promptopt_status", False):
            self.line.announce(record.getMessage())


class ProgressLine:
    def __init__(
        self, state: Any, config: pytest.Config, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.state = state
        self.config = config
        self.interval_s = interval_s
        self.clock = clock
        self.total: int | None = None
        self.done = 0
        self.calls = self.cache_hits = self.errors = 0
        self._seen = 0  # records already counted
        self.started = self._last = clock()
        self._status = _StatusHandler(self)
        self._status_level: int | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        logger = logging.getLogger(STATUS_LOGGER)
        self._status_level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self._status)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        logger = logging.getLogger(STATUS_LOGGER)
        logger.removeHandler(self._status)
        if self._status_level is not None:
            logger.setLevel(self._status_level)

    def announce(self, message: str) -> None:
        """Write `promptopt: <message>` now, even in the middle of a test (its capture paused)."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        paused = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        with paused:
            self.write(f"promptopt: {message}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)
        self.started = self._last = self.clock()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Under xdist the controller collects nothing; every worker reports the same ids.
        if self.total is None:
            self.total = len(ids)
            self.started = self._last = self.clock()

    @pytest.hookimpl(trylast=True)  # after ControllerHooks has added this test's record
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "teardown":
            return
        self.done += 1
        for _, result in self.state.records[self._seen :]:
            self.calls += result.calls
            self.cache_hits += result.cache_hits
            self.errors += 1 if result.error else 0
        self._seen = len(self.state.records)
        if self.total is not None and self.done >= self.total:
            return  # the last test: pytest ends its line ([100%]) and the promptopt summary follows
        now = self.clock()
        if now - self._last >= self.interval_s:
            self._last = now
            self.write(self.line(now - self.started))

    def line(self, elapsed_s: float) -> str:
        total = "?" if self.total is None else str(self.total)
        minutes, seconds = divmod(int(elapsed_s), 60)
        took = f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
        return (
            f"promptopt: {self.done}/{total} tests done, {counted(self.calls, 'model call')}, "
            f"{counted(self.cache_hits, 'cache hit')}, {counted(self.errors, 'error')}, {took}"
        )

    def write(self, line: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:  # -p no:terminal
            return
        reporter.ensure_newline()  # ends a line of dots after a file name (pytest re-prints the name next)
        writer = getattr(reporter, "_tw", None)
        if writer is not None and getattr(writer, "width_of_current_line", 0):
            reporter.write("\n")  # under xdist, dots have no file name and ensure_newline does nothing
        reporter.write_line(line)
