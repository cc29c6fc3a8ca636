"""The Spark backend's rows: cases and dataset rows as Arrow rows, and results back as rows.

- suite cases travel pickled (pyspark's cloudpickle), one per row of a `(position, nodeid,
  case_id, name, case)` table (`case_rows`); `CaseEvaluator` turns batches of them into batches
  of `(nodeid, record)`, the record a `CaseResult` as JSON;
- a dataset frame's rows get a stable index first (`Indexer`, see `spark.evaluate_frame`), then
  `RowEvaluator` turns each into a row of the per-case table (`dataset.CASE_COLUMNS`).

The evaluators run in Spark Python workers (runners/spark_worker.py); pyarrow is imported there,
when they are called.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..case_table import CASE_COLUMNS, case_row
from ..execute import error_result
from ..records import CaseResult
from ..suite.cases import CaseError
from ..suite.model import Case
from .dataset import row_error
from .spark_session import SparkBackendError, one_line
from .spark_worker import WorkerConfig, run_case

__all__ = [
    "CASES_SCHEMA",
    "JSON_LINE",
    "ROW_INDEX",
    "SEGMENT_FILE",
    "SEGMENT_START",
    "CaseEvaluator",
    "Indexer",
    "RowEvaluator",
    "case_rows",
    "case_table_schema",
    "row_nodeid",
]

# Columns the evaluation adds to a dataset frame on its way (never a suite's var name).
ROW_INDEX = "__promptopt_row_index"
SEGMENT_FILE = "__promptopt_segment_file"
SEGMENT_START = "__promptopt_segment_start"
JSON_LINE = "__promptopt_json_line"  # a JSON Lines source's raw line, parsed on the worker

CASES_SCHEMA = "nodeid string, record string"
_SPARK_TYPES = {"string": "string", "bool_": "boolean", "float64": "double", "int64": "bigint"}


def row_nodeid(prefix: str, row_index: int) -> str:
    """A dataset row's node id, as the in-process dataset runner names it (dataset.evaluate)."""
    return f"{prefix}row {row_index}"


def case_table_schema() -> str:
    """The per-case table's columns as a Spark schema string."""
    return ", ".join(f"{name} {_SPARK_TYPES[kind]}" for name, kind in CASE_COLUMNS)


# ----------------------------------------------------------------------------- suite cases


def case_rows(
    cases: Sequence[tuple[str, Case]],
) -> tuple[dict[str, list[Any]], dict[str, Case], list[tuple[str, CaseResult]]]:
    """The columns of the cases' table (each case pickled), the cases sent by node id, and an
    error result for each case that does not pickle (an assertion holding a lock, a generator...)."""
    from pyspark import cloudpickle

    sent: dict[str, Case] = {}
    refused: list[tuple[str, CaseResult]] = []
    rows: dict[str, list[Any]] = {"position": [], "nodeid": [], "case_id": [], "name": [], "case": []}
    for position, (nodeid, case) in enumerate(cases):
        try:
            blob = cloudpickle.dumps(case)
        except Exception as exc:  # this case only
            message = f"cannot send this case to Spark: it does not pickle ({one_line(exc)})"
            refused.append((nodeid, error_result(case, nodeid, message)))
            continue
        sent[nodeid] = case
        for key, value in zip(rows, (position, nodeid, case.case_id, case.name, blob)):
            rows[key].append(value)
    return rows, sent, refused


class CaseEvaluator:
    """mapInArrow function: batches of pickled cases -> batches of (nodeid, result JSON)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        for batch in batches:
            nodeids, records = [], []
            columns = batch.to_pydict()
            for nodeid, case_id, name, blob in zip(
                columns["nodeid"], columns["case_id"], columns["name"], columns["case"]
            ):
                try:
                    case = pickle.loads(blob)
                except Exception as exc:
                    result = CaseResult(
                        case_id,
                        name,
                        nodeid,
                        error=f"the case could not be loaded on the Spark worker ({one_line(exc)})",
                    )
                else:
                    result = run_case(case, nodeid, self.config)
                nodeids.append(nodeid)
                records.append(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
            yield pa.RecordBatch.from_pydict(
                {"nodeid": pa.array(nodeids, pa.string()), "record": pa.array(records, pa.string())}
            )


# ----------------------------------------------------------------------------- dataset rows


class Indexer:
    """mapInArrow function: a frame's rows in their source partitions -> the same rows with
    their row index (segment offset + position in the segment), segment columns dropped."""

    def __init__(self, offsets: Mapping[tuple[str, int], int], counts: Mapping[tuple[str, int], int]) -> None:
        self.offsets = offsets
        self.counts = counts

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        seen: dict[tuple[str, int], int] = {}
        for batch in batches:
            indexes = []
            for segment in zip(batch.column(SEGMENT_FILE).to_pylist(), batch.column(SEGMENT_START).to_pylist()):
                position = seen.get(segment, 0)
                seen[segment] = position + 1
                if segment not in self.offsets or position >= self.counts[segment]:
                    raise SparkBackendError(self._unstable())
                indexes.append(self.offsets[segment] + position)
            names = [n for n in batch.schema.names if n not in (SEGMENT_FILE, SEGMENT_START)]
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(n) for n in names), pa.array(indexes, pa.int64())], names=[*names, ROW_INDEX]
            )
        if any(self.counts[segment] != n for segment, n in seen.items()):
            raise SparkBackendError(self._unstable())

    @staticmethod
    def _unstable() -> str:
        return (
            "the frame's rows changed between the counting pass and the evaluation (a frame out of a "
            "shuffle or a non-deterministic source); persist or checkpoint it before evaluate_frame"
        )


class RowEvaluator:
    """mapInArrow function: indexed rows -> rows of the per-case table (dataset.CASE_COLUMNS)."""

    def __init__(
        self, make_case: Callable[[dict[str, Any], int], Case], nodeid_prefix: str, config: WorkerConfig
    ) -> None:
        self.make_case = make_case
        self.nodeid_prefix = nodeid_prefix
        self.config = config

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in CASE_COLUMNS])
        for batch in batches:
            rows = [case_row(self._result(row)) for row in batch.to_pylist()]
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    def _result(self, row: dict[str, Any]) -> CaseResult:
        index = row.pop(ROW_INDEX)
        nodeid = row_nodeid(self.nodeid_prefix, index)
        if JSON_LINE in row:
            try:
                row = _json_object(row[JSON_LINE])
            except CaseError as exc:
                return row_error(self.make_case, {}, index, nodeid, exc.message)
        try:
            case = self.make_case(row, index)
        except CaseError as exc:
            return row_error(self.make_case, row, index, nodeid, exc.message)
        except Exception as exc:
            return row_error(self.make_case, row, index, nodeid, one_line(exc))
        return run_case(case, nodeid, self.config)


def _json_object(line: str) -> dict[str, Any]:
    """A JSON Lines row, as the in-process reader reads it (less the line number it names)."""
    try:
        row = json.loads(line.lstrip("\ufeff"))
    except ValueError as exc:
        raise CaseError(f"invalid JSON: {exc}") from None
    if not isinstance(row, dict):
        raise CaseError("each line must be a JSON object")
    return row
