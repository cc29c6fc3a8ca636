"""Turns on a model's replicas: a call a test is waiting on goes before the runner's look-ahead.

The bundled model runs one CTranslate2 replica per core, and the runner keeps them busy with
batches of the cases pytest will reach next. A test that calls the model itself (a fuzz block
shrinking its input, a Python-style test) makes one call at a time and waits for each; when every
replica was running a look-ahead batch, each such call first waited for a batch to end (2-3 s in
the README's main job) and then shared the cores with it. While such calls come, look-ahead
batches leave one replica free: at most `replicas - 1` of them start, until no waited-on call has
been made for `hold_s` (the gap between two of them is milliseconds). Waited-on calls never wait
here; a look-ahead batch already running is not interrupted.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["ReplicaTurns"]

HOLD_S = 1.0  # seconds after a waited-on call during which look-ahead batches keep a replica free


class ReplicaTurns:
    def __init__(self, replicas: int, hold_s: float = HOLD_S) -> None:
        self.replicas = max(1, replicas)
        self.hold_s = hold_s
        self._changed = threading.Condition()
        self._ahead = 0  # look-ahead batches generating
        self._now = 0  # waited-on calls generating
        self._last_now = float("-inf")  # when the last waited-on call ended (monotonic)

    @contextlib.contextmanager
    def turn(self, ahead: bool) -> Iterator[None]:
        """Hold a turn for one generation call: `ahead` for the runner's look-ahead."""
        with self._changed:
            if ahead:
                while self._ahead >= max(1, self.replicas - 1) and self._tests_calling():
                    self._changed.wait(self._hold_left() or None)
                self._ahead += 1
            else:
                self._now += 1
        try:
            yield
        finally:
            with self._changed:
                if ahead:
                    self._ahead -= 1
                else:
                    self._now -= 1
                    self._last_now = time.monotonic()
                self._changed.notify_all()

    def _tests_calling(self) -> bool:
        return self._now > 0 or self._hold_left() > 0

    def _hold_left(self) -> float:
        return max(0.0, self._last_now + self.hold_s - time.monotonic())
