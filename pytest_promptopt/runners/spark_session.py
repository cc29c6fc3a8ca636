"""Starting the Spark backend's session (local, a cluster master, Spark Connect) and telling its
errors: what every other Spark module (runners/spark.py, rows.py, spark_worker.py) shares.

pyspark and pyarrow are imported when first used (`pyspark_sql`, `pyarrow_module`): Spark Python
workers import these modules too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..redact import REDACTED, is_secret_key, scrub

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "CONNECT_TIMEOUT_S",
    "SparkSettings",
    "INSTALL_HINT",
    "MissingPySpark",
    "SparkBackendError",
    "describe_error",
    "is_analysis_error",
    "is_connect",
    "is_spark_error",
    "one_line",
    "pyarrow_module",
    "pyspark_sql",
    "quiet",
    "silenced",
    "spark_session",
]

INSTALL_HINT = "the Spark backend needs pyspark: pip install 'pytest-promptopt[spark]'"
CONNECT_TIMEOUT_S = 10.0  # for the TCP check of a cluster or Spark Connect address


@dataclass(frozen=True)
class SparkSettings:
    """`--promptopt-backend spark`: a local session by default, a cluster master or Spark Connect."""

    master: str | None = None  # e.g. "spark://host:7077"; None -> "local[*]"
    remote: str | None = None  # "sc://host:port" (Spark Connect / Databricks Connect)
    app_name: str = "pytest-promptopt"


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
    SparkSession = pyspark_sql().SparkSession
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
    with quiet():
        created = not _active_session()
        try:
            spark = builder.getOrCreate()
            _ = spark.version  # Spark Connect connects lazily: talk to the server now
        except Exception as exc:
            raise SparkBackendError(f"cannot connect to Spark at {_safe_url(url)}: {describe_error(exc)}") from None
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


# ----------------------------------------------------------------------------- pyspark and its errors


def is_connect(spark: Any) -> bool:
    """A Spark Connect session (it has no SparkContext)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def pyspark_sql() -> Any:
    """`pyspark.sql`, or `MissingPySpark` saying how to install it."""
    try:
        import pyspark.sql
    except ImportError:
        raise MissingPySpark() from None
    return pyspark.sql


def pyarrow_module() -> Any:
    """`pyarrow` (with pyspark), or `MissingPySpark`."""
    pyspark_sql()
    try:
        import pyarrow
    except ImportError:
        raise MissingPySpark() from None
    return pyarrow


def is_spark_error(exc: BaseException) -> bool:
    """Errors from Spark or the link to it (pyspark, py4j, gRPC, a lost socket), not bugs here."""
    return type(exc).__module__.startswith(("pyspark", "py4j", "grpc")) or isinstance(exc, (OSError, EOFError))


def is_analysis_error(exc: BaseException) -> bool:
    from pyspark.errors import AnalysisException

    return isinstance(exc, AnalysisException)


def describe_error(exc: BaseException) -> str:
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


def one_line(exc: BaseException) -> str:
    """An exception as one short line (its type, its message scrubbed of secrets)."""
    return f"{type(exc).__name__}: {' '.join(scrub(str(exc)).split())[:300]}"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    # pyspark 4 warns that it "does not yet fully support pandas >= 3" on every Arrow call; the
    # Spark backend exchanges Arrow batches and never converts to pandas.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
        yield


@contextlib.contextmanager
def silenced(logger_name: str) -> Iterator[None]:
    """The logger `logger_name` off for the block."""
    logger = logging.getLogger(logger_name)
    was = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was
