"""Dataset suites: a suite whose cases are the rows of a table (Parquet, CSV, JSONL, a Spark table).

The loader turns a `dataset:` block into a `DatasetSpec`: where the rows are (`DatasetSource`)
and one `CaseFactory` per prompt x provider. A factory is a picklable callable
`make_case(vars, row_index) -> Case`, so the Spark backend builds cases on its executors with
the same code as a local run. Rows are read in chunks (`read_rows`), never all at once.

Knows nothing about pytest or how cases run.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.specs import ModelSpec
from ..prompt import Prompt
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S
from ..suite_info import SuiteInfo
from .cases import CaseError, Missing, Placed, build_case
from .model import Case

__all__ = [
    "CHUNK_ROWS",
    "CaseFactory",
    "DatasetSlice",
    "DatasetSource",
    "DatasetSpec",
    "columns",
    "read_rows",
]

# File suffix -> format. A folder is read as a Parquet dataset (its part files, as Spark writes them).
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK_ROWS = 1024  # rows per read: a Parquet batch, and the unit of memory a reader holds


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset suite's rows are: a file or folder (`path`) or a Spark table (`table`)."""

    written: str  # as in the suite (the path relative to it, or the table name)
    format: str  # parquet | csv | jsonl | table
    path: Path | None = None  # resolved; None for a table
    table: str | None = None
    renames: tuple[tuple[str, str], ...] = ()  # (var, column): `dataset.vars`
    limit: int | None = None

    def describe(self) -> str:
        return f"table {self.table}" if self.table else self.written


@dataclass(frozen=True)
class CaseFactory:
    """`make_case(vars, row_index) -> Case` for one prompt x provider of a dataset suite.

    `vars` are the row's columns; `dataset.vars` renames apply, then `defaultTest.vars` fill in
    what the row lacks. Raises `CaseError` for a row that cannot become a case. Plain
    frozen data, so it pickles (the Spark backend ships it to executors).
    """

    suite: SuiteInfo
    prompt: Prompt
    prompt_index: int
    model: ModelSpec
    assertions: tuple[Placed, ...]  # unrendered, with their place in the suite
    threshold: float | None = None
    defaults: tuple[tuple[str, Any], ...] = ()  # defaultTest.vars
    renames: tuple[tuple[str, str], ...] = ()
    base_dir: Path = Path(".")
    several_prompts: bool = False
    provider_tag: str | None = None  # the provider's part of the case ids (specs.case_id_tags)
    options: tuple[tuple[str, Any], ...] = ()  # defaultTest.options that are model parameters
    metadata: tuple[tuple[str, Any], ...] = ()  # defaultTest.metadata, for code checks
    transform: str | None = None  # defaultTest.options.transform: run on each answer
    env: tuple[tuple[str, Any], ...] = ()  # the suite's `env:`, which its templates read as {{env.X}}
    # The suite's nunjucksFilters (callables on this process's sandbox: a dataset suite on Spark
    # refuses them, blocks.dataset_spec), kept out of comparisons.
    filters: Mapping[str, Any] | None = field(default=None, compare=False)
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S  # the suite's limit for that transform and code checks

    def __getstate__(self) -> dict[str, Any]:
        # A pickled factory (a generated case's origin, shipped with the case to Spark's workers,
        # which run the rendered case and never render with it) goes without the filters: they
        # are callables on this process's sandbox and do not pickle.
        return {**self.__dict__, "filters": None}

    def variables(self, row: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self.defaults)
        renamed = {column for _, column in self.renames}
        values.update((str(k), v) for k, v in row.items() if k not in renamed)
        for var, column in self.renames:
            if column not in row:
                raise CaseError(f"the row has no column {column!r} (dataset.vars.{var})", ("dataset", "vars", var))
            values[var] = row[column]
        return values

    def __call__(self, row: Mapping[str, Any], row_index: int) -> Case:
        return build_case(
            self.suite,
            self.prompt,
            self.prompt_index,
            self.variables(row),
            self.assertions,
            self.model,
            name=f"row {row_index}",
            test_index=row_index,
            position=row_index,
            missing=_MISSING,
            threshold=self.threshold,
            base_dir=self.base_dir,
            several_prompts=self.several_prompts,
            provider_tag=self.provider_tag,
            options=dict(self.options),
            metadata=dict(self.metadata),
            transform=self.transform,
            script_timeout_s=self.script_timeout_s,
            env=dict(self.env) if self.env else None,
            filters=self.filters,
        )


_MISSING = Missing(("dataset",), "map a column to it with dataset.vars or set it in defaultTest.vars")


@dataclass(frozen=True)
class DatasetSlice:
    """One pytest item of a dataset suite: a prompt x provider, all rows."""

    name: str  # the item name: `dataset`, `dataset[p1]`, `dataset[p0-echo]`
    ident: str  # `""`, `p1`, `p0-echo`: names its part of the per-case table
    make_case: CaseFactory


@dataclass(frozen=True)
class DatasetSpec:
    source: DatasetSource
    slices: tuple[DatasetSlice, ...]


# ----------------------------------------------------------------------------- reading


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise CaseError("Parquet needs pyarrow: pip install pyarrow (or 'pytest-promptopt[spark]')") from None
    import pyarrow.dataset
    import pyarrow.parquet

    return pyarrow


def columns(source: DatasetSource) -> list[str]:
    """The source's column names, read from its schema or first line (not its rows)."""
    assert source.path is not None
    if source.format == "parquet":
        pa = _pyarrow()
        schema = (
            pa.dataset.dataset(str(source.path), format="parquet").schema
            if source.path.is_dir()
            else pa.parquet.read_schema(source.path)
        )
        return list(schema.names)
    with source.path.open(encoding="utf-8-sig", newline="") as handle:
        if source.format == "csv":
            return [c.strip() for c in next(csv.reader(handle), [])]
        for number, line in enumerate(handle, 1):
            if line.strip():
                row = _json_row(line, number)
                if isinstance(row, Exception):
                    raise row
                return list(row)
    return []


def read_rows(source: DatasetSource, chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[int, dict[str, Any] | CaseError]]:
    """`(row_index, row)` for each row, up to `limit`; a row that cannot be read (a JSONL line
    that is not an object) comes as a `CaseError` in its place. Holds one chunk at a time."""
    if source.path is None:
        raise CaseError(f"{source.describe()} is read by the Spark backend only (--promptopt-backend spark)")
    index = 0
    for row in _rows(source, chunk_rows):
        if source.limit is not None and index >= source.limit:
            return
        yield index, row
        index += 1


def _rows(source: DatasetSource, chunk_rows: int) -> Iterator[dict[str, Any] | CaseError]:
    assert source.path is not None
    if source.format == "parquet":
        pa = _pyarrow()
        if source.path.is_dir():
            batches = pa.dataset.dataset(str(source.path), format="parquet").to_batches(
                batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1
            )
        else:
            batches = pa.parquet.ParquetFile(source.path).iter_batches(batch_size=chunk_rows)
        for batch in batches:
            yield from batch.to_pylist()
        return
    with source.path.open(encoding="utf-8-sig", newline="") as handle:
        if source.format == "csv":
            reader = csv.DictReader(handle)
            for row in reader:
                # A short row's missing cells are empty; a long row's extra cells (key None) are dropped.
                yield {k.strip(): ("" if v is None else v) for k, v in row.items() if k is not None}
            return
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield _json_row(line, number)


def _json_row(line: str, number: int) -> dict[str, Any] | CaseError:
    try:
        row = json.loads(line)
    except ValueError as exc:
        return CaseError(f"line {number}: invalid JSON: {exc}")
    if not isinstance(row, dict):
        return CaseError(f"line {number}: each line must be a JSON object")
    return row
