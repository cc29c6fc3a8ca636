"""xdist scheduling that lets each worker work ahead on prompt cases.

A worker starts the model calls of the cases it already holds (runners/pool.py), so it needs a
look-ahead window of them: twice its share of `--promptopt-concurrency`, or of the batch size.
xdist's `--dist load` (`xdist/scheduler/load.py`) does not keep that many queued: it refills a
worker only when its queue falls below a quarter of its share of what is left, and not at all
while the worker still holds two tests and its last one took 0.1 s or more, which is every case
that waited for its call. Late in a run a worker then holds two or three cases and makes two or
three calls at a time, whatever the concurrency.

`LookaheadScheduling` is xdist's load scheduler plus one rule: while cases are left, a worker's
queue is topped up to that window whenever the next item to hand out is a prompt case, capped at
its fair share of what is left so the end of the run stays balanced. Ordinary tests, the other
`--dist` modes and runs without `--promptopt` keep xdist's own scheduling. A crashed worker is
handled by xdist as before: its queued cases go back to the others, including a top-up
that could not be sent because the worker had already died.

The plugin's `pytest_xdist_make_scheduler` hook asks `make_scheduler` for one. Importing this
module is cheap: xdist's scheduler is imported only when xdist asks for one.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest

from ..suite.chains import SEQUENCE
from ..suite.names import is_suite_file
from .pool import lookahead_window

__all__ = ["is_case_nodeid", "make_scheduler", "sequence_of", "worker_window"]


def worker_window(concurrency: int, batch_size: int, workers: int) -> int:
    """The look-ahead window of one of `workers` xdist workers: each takes 1/W of the concurrency
    (at least one call), as `PromptoptSession.runner` does."""
    return lookahead_window(max(1, concurrency // max(1, workers)), batch_size)


def make_scheduler(config: pytest.Config, log: Any, *, concurrency: int, batch_size: int) -> Any:
    """`LookaheadScheduling` for xdist's `--dist load` (its default); None for the other modes,
    and xdist picks its own scheduler."""
    if config.getvalue("dist") != "load":
        return None
    return _scheduler_class()(config, log, concurrency=concurrency, batch_size=batch_size)


def is_case_nodeid(nodeid: str) -> bool:
    """Whether a node id is a suite file's item (`path/file.promptopt.yaml::name`)."""
    path, sep, _ = nodeid.partition("::")
    return bool(sep) and is_suite_file(Path(path))


def sequence_of(nodeid: str) -> str | None:
    """The `sequence` node (suite/chains.py) a suite case's node id lies in, or None."""
    marker = f"::{SEQUENCE}::"
    if marker not in nodeid or not is_case_nodeid(nodeid):
        return None
    return nodeid.split(marker, 1)[0]


@functools.cache
def _scheduler_class() -> type:
    # Built on first use: xdist (and execnet behind it) is imported only under xdist.
    from xdist.scheduler import LoadScheduling

    class LookaheadScheduling(LoadScheduling):  # type: ignore[misc, valid-type]
        def __init__(self, config: pytest.Config, log: Any = None, *, concurrency: int, batch_size: int) -> None:
            super().__init__(config, log)
            # Each worker's window; the workers compute their share from the same worker count.
            self.window = worker_window(concurrency, batch_size, self.numnodes)
            self._cases: set[int] = set()  # collection indexes of prompt cases
            self._groups: dict[int, str | None] | None = None  # collection index -> its sequence node

        def schedule(self) -> None:
            first = self.collection is None
            super().schedule()
            if first and self.collection:
                self._cases = {i for i, nodeid in enumerate(self.collection) if is_case_nodeid(nodeid)}
                for node in self.nodes:
                    self._top_up(node)

        def _send_tests(self, node: Any, num: int) -> None:
            """xdist's, except that a chained suite's cases (its `sequence` node: storeOutputAs,
            _conversation) go to one worker together, in their order."""
            chosen = self.pending[:num]
            groups = {self._group(i) for i in chosen} - {None}
            if groups:
                chosen += [i for i in self.pending[num:] if self._group(i) in groups]
            if chosen:
                taken = set(chosen)
                self.pending[:] = [i for i in self.pending if i not in taken]
                self.node2pending[node].extend(chosen)
                node.send_runtest_some(chosen)

        def _group(self, index: int) -> str | None:
            if self._groups is None:
                self._groups = {i: sequence_of(nodeid) for i, nodeid in enumerate(self.collection or ())}
            return self._groups.get(index)

        def check_schedule(self, node: Any, duration: float = 0) -> None:
            self._top_up(node)
            super().check_schedule(node, duration)

        def _top_up(self, node: Any) -> None:
            """Fill `node`'s queue to the window while the next item to hand out is a case."""
            if node.shutting_down or not self.pending or self.pending[0] not in self._cases:
                return
            held = self.node2pending[node]
            left = len(self.pending) + sum(len(queue) for queue in self.node2pending.values())
            target = min(self.window, math.ceil(left / max(1, len(self.node2pending))))
            wanted = min(target - len(held), self.maxschedchunk or len(self.pending))
            if wanted > 0:
                try:
                    self._send_tests(node, wanted)
                except OSError:
                    # The worker died since xdist last heard from it (a case crashed it right
                    # after the first chunk). The cases are already booked to it, so xdist's
                    # `remove_node` hands them back to the others when it reads the crash.
                    pass

    return LookaheadScheduling
