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
        self._seen: set[tuple[str, str]] = set()  # (group, case id) whose output this process recorded
        # cases run ahead of their own items (`before`), until each item takes its result once
        self._ahead: dict[tuple[str, str], tuple[Case, CaseResult]] = {}
        self._lock = threading.Lock()

    def before(self, cases: Sequence[Case], case: Case) -> list[Case]:
        """The cases of `cases` (a sequence, in collection order) before `case` that have not
        run in this process and whose output `case` reads: any that stores one (`storeOutputAs`:
        registers are the suite's, whatever the provider), and the earlier turns of its
        conversation. What must run first for `case` to see what it would see in order."""
        step = case.chain
        earlier = []
        with self._lock:
            seen = set(self._seen)
        for other in cases:
            if other.case_id == case.case_id:
                break
            mine = other.chain
            if mine is None or self._key(other) in seen:
                continue
            if mine.store_as or (
                step is not None and mine.conversation is not None and mine.conversation == step.conversation
            ):
                earlier.append(other)
        return earlier

    def ahead(self, case: Case) -> tuple[Case, CaseResult] | None:
        """How `case` ran ahead of its item (the case as rendered, its result), or None."""
        with self._lock:
            return self._ahead.get(self._key(case))

    def take_ahead(self, case: Case) -> tuple[Case, CaseResult] | None:
        """`ahead`, once: the item reports it; a rerun of the item runs the case again."""
        with self._lock:
            return self._ahead.pop(self._key(case), None)

    @staticmethod
    def _key(case: Case) -> tuple[str, str]:
        return (case.chain.group if case.chain is not None else "", case.case_id)

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

    def record(self, case: Case, result: CaseResult, ahead: bool = False) -> None:
        """Keep `result`'s output for the cases after `case`: in its register (only a non-empty
        output, as promptfoo) and as a turn of its conversation; `ahead`: run before its own
        item, which takes the result (`take_ahead`)."""
        step = case.chain
        if step is None:
            return
        with self._lock:
            self._seen.add(self._key(case))
            if ahead:
                self._ahead[self._key(case)] = (case, result)
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
