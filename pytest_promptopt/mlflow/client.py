"""Calling MLflow safely and in few calls: the import and its quiet, short-timeout setting,
one-line errors, URIs and text without credentials, MLflow's value limits, batched logging (a
run's artifacts, metrics, params and tags sent together, `BatchedClient`), runs marked FAILED
when cut short, and the experiment a session logs to.

Every module of this room talks to MLflow through these helpers and an explicit `MlflowClient`
(never the global tracking URI or an active run). mlflow itself is imported only inside
`mlflow_calls()` and the functions that run under it (DEVELOPERS.md: lazy heavy imports).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..gc_pause import paused_for_first_import
from ..redact import mask_credentials, scrub
from .table_file import split_table_json

__all__ = [
    "BatchedClient",
    "MlflowSettings",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "MlflowReportError",
    "clean_tags",
    "experiment_id",
    "flag",
    "log_batch",
    "metric_key",
    "mlflow_calls",
    "one_line",
    "safe_text",
    "safe_uri",
    "terminate_on_error",
    "truncate",
]

# MLflow's limits (mlflow/utils/validation.py): values, and entities per log_batch call.
MAX_PARAM_VALUE, MAX_TAG_VALUE, _MAX_PER_BATCH = 6000, 8000, 100
_MAX_METRICS_PER_BATCH, _MAX_ENTITIES_PER_BATCH = 1000, 1000
_MAX_BATCH_CHARS = 500_000  # well under the server's 1 MB request limit (MAX_BATCH_LOG_REQUEST_SIZE)
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # MLflow's list of a run's tables (MlflowClient.log_table)
# Short network limits while logging, so a server that is down costs seconds, not minutes
# (MLflow's defaults retry 7 times over about two minutes), and no progress bars in pytest's
# output. A user's own setting wins.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# Set whatever the user's setting: MLflow prints "View run ... at: <tracking URI>" when a run ends,
# with the URI's `user:password@` in clear (TrackingServiceClient._log_url, one more request per
# run); the plugin names the run itself, masked.
_ENV_FORCED = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


class MlflowReportError(RuntimeError):
    """Logging to MLflow failed in a way we can describe in one line."""


@contextlib.contextmanager
def mlflow_calls() -> Iterator[None]:
    """Import mlflow, then keep its network limits short and its loggers, progress bars, run
    links and warnings quiet, for the duration of the logging only."""
    saved = {name: os.environ.get(name) for name in (*_ENV_DEFAULTS, *_ENV_FORCED)}
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.update(_ENV_FORCED)
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with paused_for_first_import("mlflow"):
                    import mlflow  # noqa: F401  (it sets its logger's level on import, hence the order)
            except ImportError as exc:
                if importlib.util.find_spec("mlflow") is not None:  # installed; a dependency fails
                    raise MlflowReportError(
                        f"mlflow cannot be imported: {one_line(exc)} (or pass --promptopt-no-mlflow)"
                    ) from None
                raise MlflowReportError(
                    "mlflow is not installed; pip install 'pytest-promptopt[mlflow]' (or pass --promptopt-no-mlflow)"
                ) from None
            for logger in loggers:
                logger.setLevel(logging.WARNING)  # "Creating initial MLflow database tables..." and the like
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# MLflow's error codes for a request the server refused: the credentials (HTTP 401), the user's
# permission (403) (mlflow/exceptions.py, ERROR_CODE_TO_HTTP_STATUS).
_UNAUTHENTICATED = ("UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED")
_PERMISSION_DENIED = "PERMISSION_DENIED"
# requests/urllib3 bury the cause of a network fault in a long retry message: a refused
# connection, a timeout, an unknown host, a server that hung up mid-request (RemoteDisconnected,
# a reset), else just "Connection aborted".
_NETWORK = ("Max retries exceeded", "timed out", "Connection aborted")
_CAUSE = re.compile(
    r"\[Errno -?\d+\][^\"')]*|timed out|Name or service not known"
    r"|Remote end closed connection without response|Connection reset by peer"
)


def one_line(exc: BaseException, on: str | None = None) -> str:
    """An MLflow, network or database fault as one line without credentials. A server refusing
    the credentials, or the permission on `on` (e.g. "experiment 'qa'"), says what to fix."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    code = getattr(exc, "error_code", None)
    if code in _UNAUTHENTICATED:
        return safe_text(
            f"the tracking server refused the credentials ({_refusal(exc, 401)}): set MLFLOW_TRACKING_USERNAME "
            "and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    if code == _PERMISSION_DENIED:
        return safe_text(
            f"the tracking server's user lacks permission on {on or 'this request'} ({_refusal(exc, 403)}): "
            "ask an admin of the server to grant it"
        )
    if any(sign in text for sign in _NETWORK):
        cause = _CAUSE.search(text) or re.search("Connection aborted", text)
        if cause is not None:
            return safe_text(f"cannot reach the tracking server: {cause.group(0).strip()}")
    if not isinstance(exc, MlflowReportError):
        text = f"{type(exc).__name__}: {text}"
    return safe_text(text[:400])


def _refusal(exc: BaseException, status: int) -> str:
    """`HTTP 401: '<what the server said>'`: the body MLflow quotes, or a REST error's message."""
    message = " ".join(str(getattr(exc, "message", None) or exc).split())
    quoted = re.search(r"Response body: '(.*)'$", message)
    said = quoted.group(1) if quoted else message.removeprefix(f"{getattr(exc, 'error_code', '')}: ")
    return f"HTTP {status}: '{said[:200]}'" if said else f"HTTP {status}"


def safe_text(text: str) -> str:
    """`text` without URL credentials (`https://user:pw@host`) or secret environment values
    (redact.py's rules: one for everything the plugin prints, logs or keeps)."""
    return scrub(mask_credentials(text))


def safe_uri(uri: str) -> str:
    return safe_text(uri)


def experiment_id(client: Any, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created when missing; a deleted one is an error to fix."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by another session
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise MlflowReportError(
            f"experiment '{name}' is deleted; restore it or choose another with --promptopt-experiment"
        )
    return experiment.experiment_id


def log_batch(
    client: Any, run_id: str, *, metrics: Mapping[str, float | None], params: Mapping[str, str] | None = None
) -> None:
    """Metrics (None values left out) and params in as few `log_batch` calls as MLflow allows."""
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    metric_list = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v is not None]
    param_list = [Param(k, v) for k, v in (params or {}).items()]
    for start in range(0, max(len(metric_list), len(param_list), 1), _MAX_PER_BATCH):
        end = start + _MAX_PER_BATCH
        client.log_batch(run_id, metrics=metric_list[start:end], params=param_list[start:end])


@contextlib.contextmanager
def terminate_on_error(client: Any, run_id: str) -> Iterator[None]:
    """A run cut short is marked FAILED (best effort), so it never looks like a finished session."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run_id, "FAILED")
        raise


def clean_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """Tag values without credentials, cut to MLflow's limit."""
    return {k: truncate(safe_text(str(v)), MAX_TAG_VALUE) for k, v in tags.items()}


def metric_key(name: str) -> str:
    """A param/metric key MLflow accepts (alphanumerics, `_ - . space`; no path tricks)."""
    key = re.sub(r"[^\w.\- ]", "_", name).strip() or "_"
    return "_" + key if key.startswith(".") else key


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 40] + " ... (truncated; see the artifacts)"


def flag(value: bool) -> str:
    return "true" if value else "false"


@dataclass(frozen=True)
class MlflowSettings:
    """Where the controller logs the run: `tracking_uri` and `experiment`; `pending_dir` keeps a
    run that could not be sent. `local_store` is the default SQLite store in the project."""

    tracking_uri: str
    experiment: str
    pending_dir: Path
    local_store: bool = False
    # one trace per case (mlflow/traces.py): True --promptopt-mlflow-traces, False
    # --promptopt-no-mlflow-traces, None auto (runs of up to runs.TRACES_AUTO_LIMIT cases)
    traces: bool | None = None
    prompt_prefix: str = ""  # --promptopt-prompt-prefix: e.g. "main.prompts." (Unity Catalog names)


@dataclass
class _Kept:
    """What a `BatchedClient` holds for one run until it finishes."""

    folder: Path
    metrics: list[Any] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    tables: list[dict[str, str]] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


class BatchedClient:
    """An `MlflowClient` that keeps the artifacts of each run it created in a local folder, and
    their metrics, params and tags in memory, until the run is marked FINISHED, then sends them
    together: one `log_artifacts` call and as few `log_batch` calls as MLflow's limits allow,
    instead of a call per file and per value. A run marked anything else (FAILED) drops what was
    kept. Every other call goes straight to the client, and so do calls for runs it did not
    create or already terminated, and folders (`log_artifacts`), which are not copied.

    `log_table` writes what `MlflowClient.log_table` writes for a dict: pandas'
    `to_json(orient="split", index=False, date_format="iso")` (table_file.py writes the same bytes
    without importing pandas) and the run tag
    `mlflow.loggedArtifacts`, which makes the UI show the file as a table
    (tests/test_mlflow.py compares the two). Use it as a context manager: the folder is removed
    on exit. `sent` (file sizes) and `rows` (table rows) record what each run was sent, for the
    read-back check."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._root = Path(tempfile.mkdtemp(prefix="promptopt-mlflow-"))
        self._runs: dict[str, _Kept] = {}
        self._made = 0
        self.sent: dict[str, dict[str, int]] = {}
        self.rows: dict[str, dict[str, int]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __enter__(self) -> BatchedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self._root, ignore_errors=True)

    def create_run(self, *args: Any, **kwargs: Any) -> Any:
        run = self.client.create_run(*args, **kwargs)
        self._made += 1
        self._runs[run.info.run_id] = _Kept(self._root / f"run-{self._made}")
        return run

    def _file(self, kept: _Kept, artifact_file: str) -> Path:
        relative = posixpath.normpath(artifact_file)
        if relative.startswith(("/", "..")) or relative == ".":
            raise ValueError(f"artifact path {artifact_file!r} leaves the run's artifact folder")
        path = kept.folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            return self.client.log_text(run_id, text, artifact_file)
        self._file(kept, artifact_file).write_text(text, encoding="utf-8")

    def log_table(self, run_id: str, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            return self.client.log_table(run_id, data, artifact_file)
        path = self._file(kept, artifact_file)
        text = split_table_json(data)
        if text is None:  # a column table_file does not write as pandas does
            import pandas as pd

            frame = pd.DataFrame(dict(data))
            frame.to_json(path, orient="split", index=False, date_format="iso")
            rows = len(frame)
        else:
            path.write_text(text, encoding="utf-8")
            rows = len(next(iter(data.values()), ()))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in kept.tables:
            kept.tables.append(entry)
        kept.rows[artifact_file] = rows

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            return self.client.log_artifact(run_id, local_path, artifact_path)
        name = Path(local_path).name
        shutil.copyfile(local_path, self._file(kept, posixpath.join(artifact_path, name) if artifact_path else name))

    def log_batch(
        self, run_id: str, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()
    ) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            return self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        kept.metrics.extend(metrics)
        kept.params.update((p.key, p) for p in params)
        kept.tags.update((t.key, t) for t in tags)

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        kept = self._runs.get(run_id)
        if kept is None:
            return self.client.set_tag(run_id, key, value)
        from mlflow.entities import RunTag

        kept.tags[key] = RunTag(key, str(value))

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        kept = self._runs.pop(run_id, None)
        if kept is not None:
            try:
                if status in (None, "FINISHED"):
                    self._send(run_id, kept)
            finally:
                shutil.rmtree(kept.folder, ignore_errors=True)
        self.client.set_terminated(run_id, status, end_time=end_time)

    def _send(self, run_id: str, kept: _Kept) -> None:
        from mlflow.entities import RunTag

        if kept.tables:
            kept.tags[LOGGED_ARTIFACTS_TAG] = RunTag(LOGGED_ARTIFACTS_TAG, json.dumps(kept.tables))
        for metrics, params, tags in _batches(kept.metrics, list(kept.params.values()), list(kept.tags.values())):
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
        if kept.folder.is_dir():
            self.client.log_artifacts(run_id, str(kept.folder))
            self.sent[run_id] = {
                p.relative_to(kept.folder).as_posix(): p.stat().st_size for p in kept.folder.rglob("*") if p.is_file()
            }
        self.rows[run_id] = dict(kept.rows)


def _batches(metrics: list[Any], params: list[Any], tags: list[Any]) -> Iterator[tuple[list[Any], ...]]:
    """Metrics, params and tags in `log_batch` calls within MLflow's limits: 1000 metrics, 100
    params, 100 tags and 1000 entities per call, and a request well under 1 MB."""
    batch: tuple[list[Any], list[Any], list[Any]] = ([], [], [])
    chars = 0
    limits = (_MAX_METRICS_PER_BATCH, _MAX_PER_BATCH, _MAX_PER_BATCH)
    for kind, items in enumerate((metrics, params, tags)):
        for item in items:
            size = len(item.key) + len(str(item.value)) + 64
            full = len(batch[kind]) >= limits[kind] or sum(map(len, batch)) >= _MAX_ENTITIES_PER_BATCH
            if full or (chars + size > _MAX_BATCH_CHARS and any(batch)):
                yield batch
                batch, chars = ([], [], []), 0
            batch[kind].append(item)
            chars += size
    if any(batch):
        yield batch
