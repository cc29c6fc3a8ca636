"""A dataset suite's per-case table: Parquet with the columns the Spark backend writes
(`CASE_COLUMNS`, the full `CaseResult` as JSON in `record`), one reader for both backends and a
file pandas, Spark, DuckDB and MLflow open as a table. Each pytest item writes one part
(`<ident or "all">.parquet`) into the suite's folder for the session (`cases_folder`), so the folder
is the suite's whole table: `pandas.read_parquet(folder)`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .case_stats import CaseStats
from .records import CaseResult
from .redact import redact

__all__ = ["CASE_COLUMNS", "CasesWriter", "case_row", "cases_folder", "iter_results", "stats_from_cases"]

# (name, pyarrow type): the Spark backend's output columns (runners/spark.py), in its order.
CASE_COLUMNS = (
    ("case_id", "string"),
    ("name", "string"),
    ("nodeid", "string"),
    ("status", "string"),
    ("passed", "bool_"),
    ("error", "string"),
    ("score", "float64"),
    ("output", "string"),
    ("latency_ms", "float64"),
    ("prompt_tokens", "int64"),
    ("completion_tokens", "int64"),
    ("cost", "float64"),
    ("calls", "int64"),
    ("cache_hits", "int64"),
    ("duration_s", "float64"),
    ("record", "string"),
)


ROW_GROUP = 1000  # rows buffered before a Parquet row group is written


def cases_folder(cache_dir: Path, suite_id: str, run_token: str) -> Path:
    """`<cache dir>/datasets/<suite id as a file name>-<run token>`: one folder per suite per
    session, shared by its items (under xdist too: the token is the controller's)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", suite_id).strip("-.") or "suite"
    return cache_dir / "datasets" / f"{slug}-{run_token[:12]}"


def _arrow_schema() -> Any:
    try:
        import pyarrow as pa
    except ImportError:
        raise RuntimeError(
            "a dataset suite writes its per-case table as Parquet, which needs pyarrow: pip install pyarrow"
        ) from None
    return pa.schema([(name, getattr(pa, kind)()) for name, kind in CASE_COLUMNS])


def case_row(result: CaseResult) -> dict[str, Any]:
    """A result as a row of the per-case table (redacted: the table is a report)."""
    record = redact(result.to_dict())
    row = {name: record.get(name) for name, _ in CASE_COLUMNS[:-1]}
    row["status"] = result.status
    row["record"] = json.dumps(record, ensure_ascii=False, default=str)
    return row


class CasesWriter:
    """Appends results to a Parquet file in row groups of `row_group` rows. The file gets its
    name when closed; until then it is a hidden temporary that Parquet readers skip."""

    def __init__(self, path: Path, row_group: int = ROW_GROUP) -> None:
        self.path = path
        self.row_group = row_group
        self._schema = _arrow_schema()
        self._rows: list[dict[str, Any]] = []
        self._tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(str(self._tmp), self._schema)
        self.rows = 0

    def write(self, result: CaseResult) -> None:
        self._rows.append(case_row(result))
        self.rows += 1
        if len(self._rows) >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            import pyarrow as pa

            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)

    def __enter__(self) -> CasesWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_results(path: str | Path, batch_rows: int = ROW_GROUP) -> Iterator[CaseResult]:
    """The results in a per-case table (a file, or a folder of parts), a batch at a time."""
    import pyarrow.dataset as ds

    for batch in ds.dataset(str(path), format="parquet").to_batches(
        columns=["record"], batch_size=batch_rows, batch_readahead=1, fragment_readahead=1
    ):
        for record in batch.column(0).to_pylist():
            yield CaseResult.from_dict(json.loads(record))


def stats_from_cases(path: str | Path) -> CaseStats:
    """The `CaseStats` of a per-case table, streamed (the Spark backend's output)."""
    stats = CaseStats()
    for result in iter_results(path):
        stats.add(result)
    return stats
