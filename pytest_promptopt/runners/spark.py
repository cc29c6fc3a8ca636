"""The Spark backend's jobs: evaluate suite cases, or a dataset frame's rows, as one Spark job,
locally, on a cluster or over Spark Connect.

A case crosses to a Spark Python worker pickled in a row (runners/rows.py); the worker runs
`execute.execute_case` on it, exactly as a pytest process does (runners/spark_worker.py), and
sends the `CaseResult` back as a JSON string. The job's `ExecutionSettings` (cache, timeouts,
retries, rate limits, the run's judge, the model objects to ship) travel with it.

    spark = spark_session(SparkSettings())            # local[*]; master=... or remote="sc://..."
    execution = ExecutionSettings(cache_path, CacheMode.READWRITE)
    for nodeid, result in evaluate_cases(spark, [(nodeid, case), ...], execution):
        ...
    rows = evaluate_frame(spark, read_source(spark, "rows.parquet"), make_case, execution,
                          nodeid_prefix=..., output_path=...)

pyspark and pyarrow are imported when first used. Starting the session and telling Spark's
errors apart are in runners/spark_session.py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..execute import error_result
from ..records import CaseResult
from ..suite.model import Case
from .execution import ExecutionSettings
from .rows import (
    CASES_SCHEMA,
    JSON_LINE,
    ROW_INDEX,
    SEGMENT_FILE,
    SEGMENT_START,
    CaseEvaluator,
    Indexer,
    RowEvaluator,
    case_rows,
    case_table_schema,
    row_nodeid,
)
from .spark_session import (
    INSTALL_HINT,
    MissingPySpark,
    SparkBackendError,
    describe_error,
    is_analysis_error,
    is_connect,
    is_spark_error,
    pyarrow_module,
    quiet,
    silenced,
    spark_session,
)
from .spark_worker import worker_config

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "CASES_PER_PARTITION",
    "INSTALL_HINT",
    "MissingPySpark",
    "SparkBackendError",
    "evaluate_cases",
    "evaluate_frame",
    "read_source",
    "row_nodeid",
    "spark_session",
]

# At most this many cases per Spark partition: it bounds what one task holds and, for the
# local and cluster backends, what the driver's JVM holds while streaming one partition back.
CASES_PER_PARTITION = 1000


# ----------------------------------------------------------------------------- suite cases


def evaluate_cases(
    spark: SparkSession,
    cases: Sequence[tuple[str, Case]],
    execution: ExecutionSettings,
    *,
    partitions: int | None = None,
) -> Iterator[tuple[str, CaseResult]]:
    """Evaluate `(nodeid, case)` pairs as one Spark job; yields `(nodeid, result)` as results
    stream back to the driver (in no particular order).

    `execution.models` holds the model objects Spark cannot build from a spec (`object:` specs,
    a conftest's adapters), keyed by `ModelSpec.key`; they are pickled to the workers. Hosted
    models retry `execution.retries` times (`--promptopt-retries`) and keep to its rate limits,
    split between the tasks that run at once (see `spark_worker.worker_config`). Every case
    gets exactly one result: a case that cannot be pickled, and the cases a failed Spark job
    (a crashed Python worker, a lost executor) never returned, come back with `result.error`
    saying why.
    """
    if not cases:
        return
    pa = pyarrow_module()
    rows, pending, refused = case_rows(cases)
    yield from refused
    if not pending:
        return
    try:
        with quiet():  # not around the yields: the warning filters are process-wide
            count, tasks = _partition_count(spark, len(pending), partitions, bool(execution.rate_limits))
            evaluator = CaseEvaluator(worker_config(execution, tasks))
            frame = spark.createDataFrame(pa.table(rows)).repartition(count, "position")
            results = frame.mapInArrow(evaluator, CASES_SCHEMA)
        for row in _stream(spark, results):
            result = CaseResult.from_dict(json.loads(row.record))
            pending.pop(row.nodeid, None)
            yield row.nodeid, result
    except Exception as exc:
        if not is_spark_error(exc):
            raise
        message = f"the Spark job failed before this case's result came back: {describe_error(exc)}"
        for nodeid, case in list(pending.items()):
            yield nodeid, error_result(case, nodeid, message)


def _stream(spark: SparkSession, results: DataFrame) -> Iterator[Any]:
    """The rows of `results`, a partition at a time.

    Classic `toLocalIterator` runs one job per partition, one after the other, which would run
    the cases on one core; so the results are computed by one parallel job first and kept by
    the executors (memory, spilling to disk), then streamed. Spark Connect already runs the
    whole query at once and streams the result batches."""
    if is_connect(spark):
        yield from results.toLocalIterator()
        return
    from pyspark import StorageLevel

    results = results.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        results.count()
        yield from results.toLocalIterator(prefetchPartitions=True)
    finally:
        results.unpersist()


# ----------------------------------------------------------------------------- dataset suites


def read_source(spark: SparkSession, source: Any) -> DataFrame:
    """A DataFrame of a dataset's rows, one column per var.

    `source` is a path ending .parquet/.pq, .csv, .jsonl/.ndjson/.json (JSON Lines), a folder
    of Parquet files (as Spark writes them), a table name (`catalog.schema.table`), or a
    suite's `DatasetSource`. CSV is read as the in-process reader does: every value a string,
    an empty cell an empty string, quotes doubled, newlines inside quotes kept.

    A `DatasetSource` with a `limit` keeps its first `limit` rows in the in-process reader's
    order (files in path order), not Spark's `limit` (the first rows Spark happens to read):
    the frame then carries their row indexes in a hidden column, which `evaluate_frame` uses.
    """
    if hasattr(source, "format") and hasattr(source, "table"):  # suite.dataset.DatasetSource
        frame = _read(spark, "table", source.table) if source.table else _read(spark, source.format, str(source.path))
        if source.limit is None:
            return frame
        with quiet():
            try:
                return _index_rows(frame, source.limit)[0]
            except Exception as exc:
                if not is_spark_error(exc):
                    raise
                raise SparkBackendError(f"cannot read {source.describe()}: {describe_error(exc)}") from None
    text = os.fspath(source)
    return _read(spark, _format_of(text), text)


def _format_of(text: str) -> str:
    suffix = os.path.splitext(text.rstrip("/"))[1].lower()
    formats = {
        ".parquet": "parquet",
        ".pq": "parquet",
        ".csv": "csv",
        ".jsonl": "jsonl",
        ".ndjson": "jsonl",
        ".json": "jsonl",
    }
    if suffix in formats:
        return formats[suffix]
    if "/" in text or os.sep in text or Path(text).exists():
        return "parquet"  # a folder of part files
    return "table"


def _read(spark: SparkSession, fmt: str, where: str) -> DataFrame:
    with quiet():
        try:
            if fmt == "table":
                return spark.table(where)
            if fmt == "parquet":
                return spark.read.parquet(where)
            if fmt == "jsonl":
                # Parsed on the workers with `json`, as the in-process reader does: Spark's JSON
                # reader would give every row every key seen in the file (None where absent)
                # and turn nested objects into structs with the same padding.
                from pyspark.sql import functions as F

                lines = spark.read.text(where)
                return lines.where(F.trim(lines.value) != "").select(lines.value.alias(JSON_LINE))
            if fmt == "csv":
                frame = spark.read.options(header=True, multiLine=True, escape='"', encoding="UTF-8").csv(where)
                # As the in-process reader: header names stripped (and a BOM), an empty cell is
                # "" (Spark reads it as null).
                frame = frame.toDF(*[name.lstrip("\ufeff").strip() for name in frame.columns])
                return frame.na.fill("")
        except Exception as exc:
            if not is_spark_error(exc):
                raise
            raise SparkBackendError(f"cannot read {where}: {describe_error(exc)}") from None
    raise SparkBackendError(f"cannot read {where}: unknown format {fmt!r}")


def evaluate_frame(
    spark: SparkSession,
    frame: DataFrame,
    make_case: Callable[[dict[str, Any], int], Case],
    execution: ExecutionSettings,
    *,
    nodeid_prefix: str,
    output_path: Path | str,
    partitions: int | None = None,
) -> int:
    """Evaluate every row of `frame` (its columns are a case's vars) and write the results as
    Parquet to the folder `output_path` (replaced), one row per case with the columns of
    `dataset.CASE_COLUMNS` (`record` is the full `CaseResult` as JSON). Returns the row count.

    `make_case(vars, row_index)` must pickle; a row it refuses (`CaseError`) is written as
    that row's error; a row's node id is `row_nodeid(nodeid_prefix, row_index)`. Nothing but a
    few numbers per input file comes back to the driver.

    Row indexes are consecutive from 0 and stable: a row's index is its position in the source
    read file by file in path order (as the in-process reader does), from a first, cheap pass
    that counts the rows of each file split. A frame not read from files is counted per Spark
    partition instead, which is stable as long as the frame is (persist or checkpoint a frame
    that comes out of a shuffle); if the two passes disagree, the job fails rather than write
    wrong indexes.
    """
    pyarrow_module()
    target = output_path.resolve().as_posix() if isinstance(output_path, Path) else str(output_path)
    with quiet():
        try:
            if ROW_INDEX in frame.columns:  # read_source already kept a limited source's rows
                indexed, total = frame, None
            else:
                indexed, total = _index_rows(frame)
            count, tasks = _partition_count(spark, total, partitions, bool(execution.rate_limits))
            evaluator = RowEvaluator(make_case, nodeid_prefix, worker_config(execution, tasks))
            results = indexed.repartition(count, ROW_INDEX).mapInArrow(evaluator, case_table_schema())
            results.write.mode("overwrite").parquet(target)
            if total is None:
                total = spark.read.parquet(target).count()  # from the Parquet footers
        except Exception as exc:
            if not is_spark_error(exc):
                raise
            raise SparkBackendError(f"the Spark job writing {target} failed: {describe_error(exc)}") from None
    return total


def _index_rows(frame: DataFrame, limit: int | None = None) -> tuple[DataFrame, int]:
    """`frame` with each row's index in a hidden column (its first `limit` rows only), and
    the number of those rows. Runs the counting pass."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    segmented = _with_segments(frame)
    counts = {(r[0], int(r[1])): int(r[2]) for r in segmented.groupBy(SEGMENT_FILE, SEGMENT_START).count().collect()}
    offsets = _offsets(counts)
    total = sum(counts.values())
    if limit is not None and limit < total:
        # Only the segments that hold the first `limit` rows are read again (Spark prunes files
        # by `_metadata.file_path`), then the rows past the limit in the last one are dropped.
        kept = [s for s in offsets if offsets[s] < limit]
        offsets = {s: offsets[s] for s in kept}
        counts = {s: counts[s] for s in kept}
        condition = F.lit(False)
        for file, start in kept:
            condition = condition | ((F.col(SEGMENT_FILE) == file) & (F.col(SEGMENT_START) == start))
        segmented, total = segmented.where(condition), limit
    schema = StructType([*frame.schema.fields, StructField(ROW_INDEX, LongType(), False)])
    indexed = segmented.mapInArrow(Indexer(offsets, counts), schema)
    if limit is not None:
        indexed = indexed.where(F.col(ROW_INDEX) < limit)
    return indexed, total


def _with_segments(frame: DataFrame) -> DataFrame:
    """`frame` plus the segment of each row: its file and split offset for a frame read from
    files, else its Spark partition."""
    from pyspark.sql import functions as F

    try:
        with silenced("DataFrameQueryContextLogger"):  # pyspark logs every analysis error it raises
            segmented = frame.select(
                "*",
                F.col("_metadata.file_path").alias(SEGMENT_FILE),
                F.col("_metadata.file_block_start").alias(SEGMENT_START),
            )
            _ = segmented.schema  # Spark Connect analyses lazily
        return segmented
    except Exception as exc:
        if not is_analysis_error(exc):
            raise
    return frame.select("*", F.lit("").alias(SEGMENT_FILE), F.spark_partition_id().cast("long").alias(SEGMENT_START))


def _offsets(counts: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """The first row index of each segment: segments in path order, then split order. Paths
    are URIs (`file:/a%20b.parquet`), compared decoded as the in-process reader sorts them."""
    offsets, start = {}, 0
    for segment in sorted(counts, key=lambda s: (unquote(s[0]), s[1])):
        offsets[segment] = start
        start += counts[segment]
    return offsets


# ----------------------------------------------------------------------------- partitions


def _partition_count(
    spark: SparkSession, cases: int | None, partitions: int | None, concurrent: bool = False
) -> tuple[int, int]:
    """The job's partition count (`partitions`, else one per core, fewer for fewer cases, more
    for many cases) and, when `concurrent` is asked, how many of its tasks run at once (its
    partitions, at most one per core); else 1."""
    # Spark Connect has no SparkContext: asking for its parallelism runs a small job
    parallelism = _parallelism(spark) if partitions is None or concurrent else 1
    if partitions is not None:
        count = max(1, partitions)
    elif cases is None:
        count = parallelism
    else:
        count = max(1, min(cases, parallelism), math.ceil(cases / CASES_PER_PARTITION))
    return count, (min(count, parallelism) if concurrent else 1)


def _parallelism(spark: SparkSession) -> int:
    """The cluster's default parallelism (its cores). Spark Connect has no SparkContext to ask,
    so count the partitions Spark gives a range."""
    if not is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    from pyspark.sql import functions as F

    parts = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p"))
    return int(parts.agg(F.max("p")).first()[0]) + 1
