"""The Spark backend: evaluate cases as a Spark job, locally, on a cluster or over Spark Connect.

A case crosses to a Spark Python worker pickled (pyspark's cloudpickle) in a row; the worker runs
`execute.execute_case` on it, exactly as a pytest process does, and sends the `CaseResult` back as
a JSON string. Each Python worker keeps one adapter per model and one response cache for its
whole life (Spark reuses Python workers), so a model is created once per worker, never per row.

    spark = spark_session(SparkSettings())            # local[*]; master=... or remote="sc://..."
    for nodeid, result in evaluate_cases(spark, [(nodeid, case), ...], cache_path=..., cache_mode=...):
        ...
    rows = evaluate_frame(spark, read_source(spark, "rows.parquet"), make_case, nodeid_prefix=...,
                          output_path=..., cache_path=..., cache_mode=...)

pyspark and pyarrow are imported when first used: this module stays light, because every Spark
Python worker imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import pickle
import socket
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from ..cache import CacheMode, ResponseCache
from ..execute import error_result, execute_case, model_error
from ..judging import Judges
from ..models.base import Model, ModelError
from ..models.specs import ModelSpec, create_model, with_timeout
from ..records import CaseResult
from ..redact import REDACTED, is_secret_key, scrub
from ..suite.model import Case
from .limits import DEFAULT_RETRIES, RateLimit, RateLimiter, Throttled, limit_for, throttle

if TYPE_CHECKING:  # settings imports pytest; Spark workers import this module and need neither
    from pyspark.sql import DataFrame, SparkSession

    from ..settings import SparkSettings

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

INSTALL_HINT = "the Spark backend needs pyspark: pip install 'pytest-promptopt[spark]'"
# At most this many cases per Spark partition: it bounds what one task holds and, for the
# local and cluster backends, what the driver's JVM holds while streaming one partition back.
CASES_PER_PARTITION = 1000
CONNECT_TIMEOUT_S = 10.0  # for the TCP check of a cluster or Spark Connect address

# Columns the evaluation adds to a dataset frame on its way (never a suite's var name).
_ROW_INDEX = "__promptopt_row_index"
_SEGMENT_FILE = "__promptopt_segment_file"
_SEGMENT_START = "__promptopt_segment_start"
_JSON_LINE = "__promptopt_json_line"  # a JSON Lines source's raw line, parsed on the worker

_CASES_SCHEMA = "nodeid string, record string"
_SPARK_TYPES = {"string": "string", "bool_": "boolean", "float64": "double", "int64": "bigint"}


class SparkBackendError(RuntimeError):
    """Spark could not be reached, or a Spark job failed. The message names the address."""


class MissingPySpark(SparkBackendError, ImportError):
    """pyspark (or pyarrow) is not installed."""

    def __init__(self) -> None:
        super().__init__(INSTALL_HINT)


# ----------------------------------------------------------------------------- the session


def spark_session(settings: SparkSettings) -> SparkSession:
    """A SparkSession for `settings`: Spark Connect for `remote`, the cluster at `master`,
    else `local[*]`. Raises `SparkBackendError` naming the address when it cannot connect."""
    SparkSession = _pyspark_sql().SparkSession
    if settings.remote:
        url = settings.remote
        _check_reachable(url, _connect_address(url))
        builder = SparkSession.builder.remote(url).appName(settings.app_name)
    else:
        url = settings.master or "local[*]"
        if url.startswith("spark://"):
            for address in _master_addresses(url):
                _check_reachable(url, address)
        builder = SparkSession.builder.master(url).appName(settings.app_name)
        if url.startswith("local"):
            builder = _local_builder(builder)
    with _quiet():
        created = not _active_session()
        try:
            spark = builder.getOrCreate()
            _ = spark.version  # Spark Connect connects lazily: talk to the server now
        except Exception as exc:
            raise SparkBackendError(f"cannot connect to Spark at {_safe_url(url)}: {_describe(exc)}") from None
    if created and url.startswith("local"):
        spark.sparkContext.setLogLevel("ERROR")  # our own session: keep JVM warnings out of the pytest output
    return spark


def _local_builder(builder: Any) -> Any:
    # The Python workers of a local session must run this interpreter (it has pytest-promptopt);
    # pyspark otherwise starts whatever `python3` is on PATH. A local session needs no network
    # interface, and binding to loopback avoids the "hostname resolves to a loopback address"
    # lookups on machines without DNS.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    cores = os.cpu_count() or 2
    confs = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": str(max(2, 2 * cores)),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
    }
    for key, value in confs.items():
        builder = builder.config(key, value)
    return builder


def _active_session() -> bool:
    from pyspark import SparkContext

    return SparkContext._active_spark_context is not None


def _safe_url(url: str) -> str:
    """`url` with secret parameters masked: `sc://host:443/;token=***;x-databricks-cluster-id=...`."""
    head, sep, params = url.partition(";")
    if not sep:
        return url
    masked = []
    for param in params.split(";"):
        key, eq, value = param.partition("=")
        masked.append(f"{key}={REDACTED}" if eq and is_secret_key(key) else param)
    return scrub(head + ";" + ";".join(masked))


def _connect_address(url: str) -> tuple[str, int]:
    parsed = urlparse(url.partition(";")[0])
    if parsed.scheme != "sc" or not parsed.hostname:
        raise SparkBackendError(f"--promptopt-spark-remote {_safe_url(url)}: a Spark Connect address is sc://host:port")
    return parsed.hostname, parsed.port or 15002  # Spark Connect's default port


def _master_addresses(url: str) -> list[tuple[str, int]]:
    addresses = []
    for hostport in url[len("spark://") :].split(","):
        host, _, port = hostport.rstrip("/").rpartition(":")
        addresses.append((host or hostport, int(port) if port.isdigit() else 7077))
    return addresses


def _check_reachable(url: str, address: tuple[str, int]) -> None:
    """Fail fast on a wrong address: pyspark retries an unreachable cluster or Connect server
    for minutes (its retries are meant for a cluster that is starting, which does accept TCP)."""
    try:
        socket.create_connection(address, timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise SparkBackendError(
            f"cannot connect to Spark at {_safe_url(url)}: {address[0]}:{address[1]}: {exc.strerror or exc}"
        ) from None


# ----------------------------------------------------------------------------- suite cases


def evaluate_cases(
    spark: SparkSession,
    cases: Sequence[tuple[str, Case]],
    *,
    cache_path: Path | str,
    cache_mode: CacheMode,
    models: Mapping[str, Model] = {},
    timeout_s: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    rate_limits: Sequence[RateLimit] = (),
    partitions: int | None = None,
    judge: ModelSpec | None = None,
) -> Iterator[tuple[str, CaseResult]]:
    """Evaluate `(nodeid, case)` pairs as one Spark job; yields `(nodeid, result)` as results
    stream back to the driver (in no particular order).

    `models` holds the model objects Spark cannot build from a spec (`object:` specs, a
    conftest's adapters), keyed by `ModelSpec.key`; they are pickled to the workers. Hosted
    models retry `retries` times (`--promptopt-retries`) and keep to `rate_limits`, split
    between the tasks that run at once (see `_worker_config`). Every case
    gets exactly one result: a case that cannot be pickled, and the cases a failed Spark job
    (a crashed Python worker, a lost executor) never returned, come back with `result.error`
    saying why.
    """
    if not cases:
        return
    pa = _pyarrow()
    from pyspark import cloudpickle

    pending: dict[str, Case] = {}
    rows: dict[str, list[Any]] = {"position": [], "nodeid": [], "case_id": [], "name": [], "case": []}
    for position, (nodeid, case) in enumerate(cases):
        try:
            blob = cloudpickle.dumps(case)
        except Exception as exc:  # an assertion holding a lock, a generator...: this case only
            yield (
                nodeid,
                error_result(case, nodeid, f"cannot send this case to Spark: it does not pickle ({_one_line(exc)})"),
            )
            continue
        pending[nodeid] = case
        for key, value in zip(rows, (position, nodeid, case.case_id, case.name, blob)):
            rows[key].append(value)
    if not pending:
        return
    try:
        with _quiet():  # not around the yields: the warning filters are process-wide
            count, tasks = _partition_count(spark, len(pending), partitions, bool(rate_limits))
            evaluator = _CaseEvaluator(
                _worker_config(cache_path, cache_mode, models, timeout_s, retries, rate_limits, tasks, judge)
            )
            frame = spark.createDataFrame(pa.table(rows)).repartition(count, "position")
            results = frame.mapInArrow(evaluator, _CASES_SCHEMA)
        for row in _stream(spark, results):
            result = CaseResult.from_dict(json.loads(row.record))
            pending.pop(row.nodeid, None)
            yield row.nodeid, result
    except Exception as exc:
        if not _is_spark_error(exc):
            raise
        message = f"the Spark job failed before this case's result came back: {_describe(exc)}"
        for nodeid, case in list(pending.items()):
            yield nodeid, error_result(case, nodeid, message)


def _stream(spark: SparkSession, results: DataFrame) -> Iterator[Any]:
    """The rows of `results`, a partition at a time.

    Classic `toLocalIterator` runs one job per partition, one after the other, which would run
    the cases on one core; so the results are computed by one parallel job first and kept by
    the executors (memory, spilling to disk), then streamed. Spark Connect already runs the
    whole query at once and streams the result batches."""
    if _is_connect(spark):
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


def row_nodeid(prefix: str, row_index: int) -> str:
    """A dataset row's node id, as the in-process dataset runner names it (dataset.evaluate)."""
    return f"{prefix}row {row_index}"


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
        with _quiet():
            try:
                return _index_rows(frame, source.limit)[0]
            except Exception as exc:
                if not _is_spark_error(exc):
                    raise
                raise SparkBackendError(f"cannot read {source.describe()}: {_describe(exc)}") from None
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
    with _quiet():
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
                return lines.where(F.trim(lines.value) != "").select(lines.value.alias(_JSON_LINE))
            if fmt == "csv":
                frame = spark.read.options(header=True, multiLine=True, escape='"', encoding="UTF-8").csv(where)
                # As the in-process reader: header names stripped (and a BOM), an empty cell is
                # "" (Spark reads it as null).
                frame = frame.toDF(*[name.lstrip("\ufeff").strip() for name in frame.columns])
                return frame.na.fill("")
        except Exception as exc:
            if not _is_spark_error(exc):
                raise
            raise SparkBackendError(f"cannot read {where}: {_describe(exc)}") from None
    raise SparkBackendError(f"cannot read {where}: unknown format {fmt!r}")


def evaluate_frame(
    spark: SparkSession,
    frame: DataFrame,
    make_case: Callable[[dict[str, Any], int], Case],
    *,
    nodeid_prefix: str,
    output_path: Path | str,
    cache_path: Path | str,
    cache_mode: CacheMode,
    models: Mapping[str, Model] = {},
    timeout_s: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    rate_limits: Sequence[RateLimit] = (),
    partitions: int | None = None,
    judge: ModelSpec | None = None,
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
    _pyarrow()
    target = output_path.resolve().as_posix() if isinstance(output_path, Path) else str(output_path)
    with _quiet():
        try:
            if _ROW_INDEX in frame.columns:  # read_source already kept a limited source's rows
                indexed, total = frame, None
            else:
                indexed, total = _index_rows(frame)
            count, tasks = _partition_count(spark, total, partitions, bool(rate_limits))
            config = _worker_config(cache_path, cache_mode, models, timeout_s, retries, rate_limits, tasks, judge)
            evaluator = _RowEvaluator(make_case, nodeid_prefix, config)
            results = indexed.repartition(count, _ROW_INDEX).mapInArrow(evaluator, _case_table_schema())
            results.write.mode("overwrite").parquet(target)
            if total is None:
                total = spark.read.parquet(target).count()  # from the Parquet footers
        except Exception as exc:
            if not _is_spark_error(exc):
                raise
            raise SparkBackendError(f"the Spark job writing {target} failed: {_describe(exc)}") from None
    return total


def _index_rows(frame: DataFrame, limit: int | None = None) -> tuple[DataFrame, int]:
    """`frame` with each row's index in a hidden column (its first `limit` rows only), and
    the number of those rows. Runs the counting pass."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    segmented = _with_segments(frame)
    counts = {(r[0], int(r[1])): int(r[2]) for r in segmented.groupBy(_SEGMENT_FILE, _SEGMENT_START).count().collect()}
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
            condition = condition | ((F.col(_SEGMENT_FILE) == file) & (F.col(_SEGMENT_START) == start))
        segmented, total = segmented.where(condition), limit
    schema = StructType([*frame.schema.fields, StructField(_ROW_INDEX, LongType(), False)])
    indexed = segmented.mapInArrow(_Indexer(offsets, counts), schema)
    if limit is not None:
        indexed = indexed.where(F.col(_ROW_INDEX) < limit)
    return indexed, total


def _with_segments(frame: DataFrame) -> DataFrame:
    """`frame` plus the segment of each row: its file and split offset for a frame read from
    files, else its Spark partition."""
    from pyspark.sql import functions as F

    try:
        with _silenced("DataFrameQueryContextLogger"):  # pyspark logs every analysis error it raises
            segmented = frame.select(
                "*",
                F.col("_metadata.file_path").alias(_SEGMENT_FILE),
                F.col("_metadata.file_block_start").alias(_SEGMENT_START),
            )
            _ = segmented.schema  # Spark Connect analyses lazily
        return segmented
    except Exception as exc:
        if not _is_analysis_error(exc):
            raise
    return frame.select("*", F.lit("").alias(_SEGMENT_FILE), F.spark_partition_id().cast("long").alias(_SEGMENT_START))


def _offsets(counts: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """The first row index of each segment: segments in path order, then split order. Paths
    are URIs (`file:/a%20b.parquet`), compared decoded as the in-process reader sorts them."""
    offsets, start = {}, 0
    for segment in sorted(counts, key=lambda s: (unquote(s[0]), s[1])):
        offsets[segment] = start
        start += counts[segment]
    return offsets


def _case_table_schema() -> str:
    from .dataset import CASE_COLUMNS

    return ", ".join(f"{name} {_SPARK_TYPES[kind]}" for name, kind in CASE_COLUMNS)


# ----------------------------------------------------------------------------- shared helpers


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
    if not _is_connect(spark):
        return int(spark.sparkContext.defaultParallelism)
    from pyspark.sql import functions as F

    parts = spark.range(0, 1 << 16).select(F.spark_partition_id().alias("p"))
    return int(parts.agg(F.max("p")).first()[0]) + 1


def _is_connect(spark: Any) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


def _pyspark_sql() -> Any:
    try:
        import pyspark.sql
    except ImportError:
        raise MissingPySpark() from None
    return pyspark.sql


def _pyarrow() -> Any:
    _pyspark_sql()
    try:
        import pyarrow
    except ImportError:
        raise MissingPySpark() from None
    return pyarrow


def _is_spark_error(exc: BaseException) -> bool:
    """Errors from Spark or the link to it (pyspark, py4j, gRPC, a lost socket), not bugs here."""
    return type(exc).__module__.startswith(("pyspark", "py4j", "grpc")) or isinstance(exc, (OSError, EOFError))


def _is_analysis_error(exc: BaseException) -> bool:
    from pyspark.errors import AnalysisException

    return isinstance(exc, AnalysisException)


def _describe(exc: BaseException) -> str:
    """A Spark error in a few lines: its first line and, for a Python worker's exception, the
    last line of the worker's traceback; never a JVM stack."""
    text = scrub(str(exc)).strip()
    lines = [line.strip().removeprefix(": ") for line in text.splitlines()]
    # py4j opens with "An error occurred while calling o66.count." and ends with the JVM stack
    lines = [line for line in lines if line and not line.startswith(("at ", "An error occurred while calling", "..."))]
    if not lines:
        return type(exc).__name__
    summary = lines[0]
    tail = next((line for line in reversed(lines) if not line.startswith(("File ", "SQLSTATE", "JVM stacktrace"))), "")
    if "Traceback" in text and tail and tail != summary:
        summary = f"{summary} ... {tail}"
    return summary[:1000]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(scrub(str(exc)).split())[:300]}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # pyspark 4 warns that it "does not yet fully support pandas >= 3" on every Arrow call; this
    # module exchanges Arrow batches and never converts to pandas.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield


@contextlib.contextmanager
def _silenced(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was


# ----------------------------------------------------------------------------- on the workers


@dataclass(frozen=True)
class _WorkerConfig:
    """What a Python worker needs besides the rows: plain data, pickled with each task."""

    cache_path: str
    cache_mode: str
    timeout_s: float
    retries: int = DEFAULT_RETRIES  # --promptopt-retries, for hosted models without their own num_retries
    rate_limits: tuple[RateLimit, ...] = ()  # each a task's share of --promptopt-rate-limit
    # spec key -> (digest, cloudpickled model): unpickled once per worker, not once per task
    shipped: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)  # spec key -> why it could not be shipped
    judge: ModelSpec | None = None  # the run's judge model (model-graded assertions without a provider)


def _worker_config(
    cache_path: Path | str,
    cache_mode: CacheMode,
    models: Mapping[str, Model],
    timeout_s: float,
    retries: int = DEFAULT_RETRIES,
    rate_limits: Sequence[RateLimit] = (),
    tasks: int = 1,
    judge: ModelSpec | None = None,
) -> _WorkerConfig:
    """The workers' settings. A rate limit is split between the `tasks` that run at once, as
    between xdist workers: a Python worker runs one task at a time and keeps its limiter for
    its life, so the workers together stay within the budget."""
    from pyspark import cloudpickle

    shipped, refused = {}, {}
    for key, model in models.items():
        try:
            blob = cloudpickle.dumps(_shippable(model))
        except Exception as exc:  # its cases become model errors, as for a model that cannot be created
            name = getattr(model, "name", type(model).__name__)
            refused[key] = f"model {name!r} cannot be sent to Spark workers: it does not pickle ({_one_line(exc)})"
            continue
        shipped[key] = (hashlib.sha256(blob).hexdigest()[:16], blob)
    path = cache_path.resolve().as_posix() if isinstance(cache_path, Path) else str(cache_path)
    shares = tuple(limit.share(max(1, tasks)) for limit in rate_limits)
    return _WorkerConfig(
        path, CacheMode(cache_mode).value, float(timeout_s), int(retries), shares, shipped, refused, judge
    )


def _shippable(model: Model) -> Model:
    """A hosted model keeps its retry policy on the workers but not this process's rate limiter
    (a lock and this process's budget): each worker gives it its own (`_worker_model`)."""
    if isinstance(model, Throttled) and model.limiter is not None:
        return Throttled(model.model, model.policy)  # type: ignore[return-value]
    return model


# Per Python worker process, for its whole life: Spark reuses a Python worker for task after
# task (spark.python.worker.reuse, on by default), and a worker runs one task at a time.
_models: dict[str, Model] = {}
_caches: dict[tuple[str, str], ResponseCache] = {}
_limiters: dict[RateLimit, RateLimiter] = {}  # by the worker's share of a provider's limit


def _worker_model(spec: ModelSpec, config: _WorkerConfig) -> Model:
    """The worker's adapter for `spec`, made on first use. A shipped object is keyed by its
    pickle's digest too: a different object (or the same one changed) is a different model."""
    if spec.key in config.refused:
        raise ModelError(config.refused[spec.key])
    shipped = config.shipped.get(spec.key)
    if shipped is not None:
        digest, blob = shipped
        key = f"{spec.key}:{digest}"
        model = _models.get(key)
        if model is None:
            try:
                model = pickle.loads(blob)
            except Exception as exc:
                raise ModelError(
                    f"the model object could not be loaded on the Spark worker ({_one_line(exc)}); "
                    "its class must be importable there (install its module on the workers)"
                ) from None
            _models[key] = model
        if isinstance(model, Throttled):  # a hosted adapter, shipped without its limiter
            model.limiter = _worker_limiter(getattr(model.model, "model", model.name), config)
        return model
    effective = with_timeout(spec, config.timeout_s)
    # The retries and limits are the job's: a worker outlives jobs, which may set others.
    key = f"{effective.key}:{config.retries}:{config.rate_limits}"
    model = _models.get(key)
    if model is None:
        model = _throttled(create_model(effective), config)
        _models[key] = model
    return model


def _throttled(model: Model, config: _WorkerConfig) -> Model:
    """A hosted model retries transient faults and keeps to its provider's rate limit, as in a
    pytest process (`PromptoptSession.model_for`), with this worker's share of the limit."""
    from ..models.hosted import LiteLLMModel

    if not isinstance(model, LiteLLMModel):
        return model
    return throttle(model, config.retries, _worker_limiter(model.model, config))  # type: ignore[return-value]


def _worker_limiter(model_id: str, config: _WorkerConfig) -> RateLimiter | None:
    limit = limit_for(config.rate_limits, model_id)
    if limit is None:
        return None
    limiter = _limiters.get(limit)
    if limiter is None:
        limiter = _limiters[limit] = RateLimiter(limit)
    return limiter


def _worker_cache(config: _WorkerConfig) -> ResponseCache:
    key = (config.cache_path, config.cache_mode)
    cache = _caches.get(key)
    if cache is None:
        # also where `similar` graded on this executor keeps its embeddings (execute_case's cache)
        cache = _caches[key] = ResponseCache(Path(config.cache_path), CacheMode(config.cache_mode))
    return cache


def _run(case: Case, nodeid: str, config: _WorkerConfig) -> CaseResult:
    try:
        model = _worker_model(case.model, config)
    except ModelError as exc:
        return model_error(case, nodeid, exc)
    try:
        return execute_case(case, model, _worker_cache(config), nodeid, judges=_worker_judges(config))
    except Exception as exc:  # execute_case turns model and assertion faults into errors; this is anything else
        return error_result(case, nodeid, f"internal error on the Spark worker: {_one_line(exc)}")


def _worker_judges(config: _WorkerConfig) -> Judges:
    """Judge models on a worker: built from their specs as the cases' models are (a conftest's
    hook-made judges arrive shipped), through the worker's cache."""
    from ..models.specs import BUNDLED

    return Judges(
        lambda spec: _worker_model(spec, config), lambda: _worker_cache(config), config.judge or ModelSpec(BUNDLED)
    )


class _CaseEvaluator:
    """mapInArrow function: batches of pickled cases -> batches of (nodeid, result JSON)."""

    def __init__(self, config: _WorkerConfig) -> None:
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
                        error=f"the case could not be loaded on the Spark worker ({_one_line(exc)})",
                    )
                else:
                    result = _run(case, nodeid, self.config)
                nodeids.append(nodeid)
                records.append(json.dumps(result.to_dict(), ensure_ascii=False, default=str))
            yield pa.RecordBatch.from_pydict(
                {"nodeid": pa.array(nodeids, pa.string()), "record": pa.array(records, pa.string())}
            )


class _Indexer:
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
            for segment in zip(batch.column(_SEGMENT_FILE).to_pylist(), batch.column(_SEGMENT_START).to_pylist()):
                position = seen.get(segment, 0)
                seen[segment] = position + 1
                if segment not in self.offsets or position >= self.counts[segment]:
                    raise SparkBackendError(self._unstable())
                indexes.append(self.offsets[segment] + position)
            names = [n for n in batch.schema.names if n not in (_SEGMENT_FILE, _SEGMENT_START)]
            yield pa.RecordBatch.from_arrays(
                [*(batch.column(n) for n in names), pa.array(indexes, pa.int64())], names=[*names, _ROW_INDEX]
            )
        if any(self.counts[segment] != n for segment, n in seen.items()):
            raise SparkBackendError(self._unstable())

    @staticmethod
    def _unstable() -> str:
        return (
            "the frame's rows changed between the counting pass and the evaluation (a frame out of a "
            "shuffle or a non-deterministic source); persist or checkpoint it before evaluate_frame"
        )


class _RowEvaluator:
    """mapInArrow function: indexed rows -> rows of the per-case table (dataset.CASE_COLUMNS)."""

    def __init__(
        self, make_case: Callable[[dict[str, Any], int], Case], nodeid_prefix: str, config: _WorkerConfig
    ) -> None:
        self.make_case = make_case
        self.nodeid_prefix = nodeid_prefix
        self.config = config

    def __call__(self, batches: Iterator[Any]) -> Iterator[Any]:
        import pyarrow as pa

        from .dataset import CASE_COLUMNS, case_row

        schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in CASE_COLUMNS])
        for batch in batches:
            rows = [case_row(self._result(row)) for row in batch.to_pylist()]
            yield pa.RecordBatch.from_pylist(rows, schema=schema)

    def _result(self, row: dict[str, Any]) -> CaseResult:
        from ..suite.cases import CaseError
        from .dataset import row_error

        index = row.pop(_ROW_INDEX)
        nodeid = row_nodeid(self.nodeid_prefix, index)
        if _JSON_LINE in row:
            try:
                row = _json_object(row[_JSON_LINE])
            except CaseError as exc:
                return row_error(self.make_case, {}, index, nodeid, exc.message)
        try:
            case = self.make_case(row, index)
        except CaseError as exc:
            return row_error(self.make_case, row, index, nodeid, exc.message)
        except Exception as exc:
            return row_error(self.make_case, row, index, nodeid, _one_line(exc))
        return _run(case, nodeid, self.config)


def _json_object(line: str) -> dict[str, Any]:
    """A JSON Lines row, as the in-process reader reads it (less the line number it names)."""
    from ..suite.cases import CaseError

    try:
        row = json.loads(line.lstrip("\ufeff"))
    except ValueError as exc:
        raise CaseError(f"invalid JSON: {exc}") from None
    if not isinstance(row, dict):
        raise CaseError("each line must be a JSON object")
    return row
