"""Cases that depend on the outputs of the cases before them: promptfoo's `options.storeOutputAs`
(a test's output becomes a var of every later case) and `_conversation` (the earlier turns of a
conversation, for a prompt that reads it).

Such a suite's cases are built at load without being rendered (`ChainStep.build`) and collected
under one `sequence` node, which runs in one process in collection order (plain, `-p no:xdist`,
and under xdist's `--dist load`, whose scheduler sends a sequence to one worker whole:
runners/scheduling.py). `ChainRuns`, held by the session, keeps the outputs and renders each
case when it runs.

When something else decides the order (pytest-randomly, `--dist worksteal` or `loadgroup`, a
node id naming a later case), a case whose earlier cases have not run in this process runs them
first (`before`: the session runs them, unreported, as its own item would); each case runs once
per process, so the item of an earlier case that comes later reports the result it already has.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from ..nunjucks import json_parse
from ..records import CaseResult
from .model import Case

__all__ = ["SEQUENCE", "ChainRuns"]

SEQUENCE = "sequence"  # the name of the collector node that holds a chained suite's cases


class ChainRuns:
    """The registers and conversation turns each chained suite has produced in this process."""

    def __init__(self) -> None:
        self._registers: dict[str, dict[str, Any]] = {}
        self._turns: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._ran: dict[tuple[str, str], tuple[Case, CaseResult]] = {}  # (group, case id) -> as it ran
        self._lock = threading.Lock()

    def before(self, cases: Sequence[Case], case: Case) -> list[Case]:
        """The cases of `cases` (a sequence, in collection order) before `case` that have not
        run in this process: what must run first for `case` to see their outputs."""
        earlier = []
        for other in cases:
            if other.case_id == case.case_id:
                break
            if other.chain is not None and self.done(other) is None:
                earlier.append(other)
        return earlier

    def done(self, case: Case) -> tuple[Case, CaseResult] | None:
        """How `case` ran in this process (the case as rendered, its result), or None."""
        step = case.chain
        with self._lock:
            return None if step is None else self._ran.get((step.group, case.case_id))

    def prepare(self, case: Case) -> Case:
        """`case` rendered with what the cases before it produced (itself when not chained)."""
        step = case.chain
        if step is None:
            return case
        with self._lock:
            # a stored output is a var like any other: one trailing newline dropped (promptfoo)
            extra: dict[str, Any] = {
                k: v[:-1] if isinstance(v, str) and v.endswith("\n") else v
                for k, v in self._registers.get(step.group, {}).items()
            }
            if step.conversation is not None:
                extra["_conversation"] = list(self._turns.get(step.group, {}).get(step.conversation, []))
        return dataclasses.replace(step.build(extra), chain=step)

    def record(self, case: Case, result: CaseResult) -> None:
        """Keep `result`'s output for the cases after `case`: in its register (only a non-empty
        output, as promptfoo) and as a turn of its conversation."""
        step = case.chain
        if step is None:
            return
        with self._lock:
            self._ran[(step.group, case.case_id)] = (case, result)
            if result.output is None:
                return
            if step.store_as and result.output:
                self._registers.setdefault(step.group, {})[step.store_as] = result.output
            if step.conversation is not None:
                turns = self._turns.setdefault(step.group, {}).setdefault(step.conversation, [])
                turns.append(_turn(case.rendered_prompt, result.output))


def _turn(rendered: str, output: str) -> dict[str, Any]:
    """promptfoo's `updateConversationHistory`: the prompt (parsed when it is JSON), the last
    message's content as the input, and the output."""
    try:
        parsed: Any = json_parse(rendered)
    except ValueError:
        parsed = None
    last: Any = None
    if isinstance(parsed, list) and parsed:
        item = parsed[-1]
        last = (item.get("content") if isinstance(item, Mapping) else None) or item
    return {"prompt": parsed or rendered, "input": last or parsed or rendered, "output": output or "", "metadata": {}}
