"""Running a dataset suite: rows -> cases -> results, streamed into a per-case Parquet table and
folded into a `CaseStats`, so neither the process running it nor the controller holds the rows.

The table's format, writer and reader are `case_table.py`'s.

Nothing here knows about pytest: `items.DatasetItem` passes in the rows, the case factory and
the runner's `map`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..case_stats import CaseStats
from ..case_table import CasesWriter
from ..execute import json_safe
from ..records import CaseResult
from ..suite.cases import CaseError

__all__ = ["Evaluation", "evaluate", "row_error"]

KEEP_FAILURES = 5  # failed or errored rows kept for the item's failure message
Pair = tuple[Any, str]  # (Case, node id), what the runner maps


@dataclass
class Evaluation:
    """What evaluating a dataset slice left in memory: stats, a few failures, a read error."""

    stats: CaseStats = field(default_factory=CaseStats)
    failures: list[CaseResult] = field(default_factory=list)  # the first KEEP_FAILURES failed or errored rows
    read_error: str | None = None  # the source broke off: the rows before it were evaluated

    def add(self, result: CaseResult) -> None:
        self.stats.add(result)
        if result.status != "passed" and len(self.failures) < KEEP_FAILURES:
            self.failures.append(result)


def row_error(make_case: Any, row: Any, index: int, nodeid: str, message: str) -> CaseResult:
    """The result of a row that could not become a case: an error, never a model call."""
    from ..suite.cases import case_id

    values = json_safe(row) if isinstance(row, dict) else {}
    model, prompt = getattr(make_case, "model", None), getattr(make_case, "prompt", None)
    return CaseResult(
        case_id(values, index),
        f"row {index}",
        nodeid,
        vars=values,
        error=f"row {index}: {message}",
        prompt_index=getattr(make_case, "prompt_index", None),
        test_index=index,
        position=index,
        model=model.display if model is not None else "",
        template=prompt.template if prompt is not None else None,
        provider_transform=model.transform if model is not None else None,
    )


def evaluate(
    rows: Iterable[tuple[int, Any]],
    make_case: Callable[[dict[str, Any], int], Any],
    results_of: Callable[[Iterable[Pair]], Iterator[CaseResult]],
    writer: CasesWriter,
    nodeid_prefix: str,
) -> Evaluation:
    """Turn `rows` into cases, run them through `results_of` (the runner's ordered, lazy `map`)
    and write each result as it comes. A row that cannot become a case is written as an error
    result; a source that breaks off ends the run with `read_error` set."""
    evaluation = Evaluation()
    refused: deque[CaseResult] = deque()  # rows that failed to become cases, written in turn

    def pairs() -> Iterator[Pair]:
        try:
            for index, row in rows:
                nodeid = f"{nodeid_prefix}row {index}"
                try:
                    if isinstance(row, CaseError):
                        raise row
                    case = make_case(row, index)
                except CaseError as exc:
                    refused.append(row_error(make_case, row, index, nodeid, exc.message))
                    continue
                yield case, nodeid
        except Exception as exc:  # any reader fault (OSError, pyarrow, csv, decoding): keep what was read
            evaluation.read_error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"

    def take(result: CaseResult) -> None:
        evaluation.add(result)
        writer.write(result)

    for result in results_of(pairs()):
        while refused:
            take(refused.popleft())
        take(result)
    while refused:
        take(refused.popleft())
    return evaluation
