"""Calling MLflow safely: the import and its quiet, short-timeout setting, one-line errors,
URIs and text without credentials, MLflow's value limits, batched logging, runs marked FAILED
when cut short, and the experiment a session logs to.

Every module of this room talks to MLflow through these helpers and an explicit `MlflowClient`
(never the global tracking URI or an active run). mlflow itself is imported only inside
`mlflow_calls()` and the functions that run under it (DEVELOPERS.md: lazy heavy imports).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..redact import scrub

__all__ = [
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
# Short network limits while logging, so a server that is down costs seconds, not minutes
# (MLflow's defaults retry 7 times over about two minutes), and no progress bars in pytest's
# output. A user's own setting wins.
_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)


class MlflowReportError(RuntimeError):
    """Logging to MLflow failed in a way we can describe in one line."""


@contextlib.contextmanager
def mlflow_calls() -> Iterator[None]:
    """Import mlflow, then keep its network limits short and its loggers, progress bars and
    warnings quiet, for the duration of the logging only."""
    saved = {name: os.environ.get(name) for name in _ENV_DEFAULTS}
    for name, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(name, value)
    loggers = [logging.getLogger(name) for name in ("mlflow", "alembic")]
    levels = [logger.level for logger in loggers]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import mlflow  # noqa: F401  (it sets its logger's level on import, hence the order)
            except ImportError:
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


def one_line(exc: BaseException) -> str:
    """An MLflow, network or database fault as one line without credentials."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    # requests/urllib3 bury the cause ("Connection refused", a timeout) in a long retry message.
    cause = re.search(r"(\[Errno -?\d+\][^\"')]*|timed out|Name or service not known)", text)
    if cause and ("Max retries exceeded" in text or "timed out" in text):
        return safe_text(f"cannot reach the tracking server: {cause.group(1).strip()}")
    if not isinstance(exc, MlflowReportError):
        text = f"{type(exc).__name__}: {text}"
    return safe_text(text[:400])


def safe_text(text: str) -> str:
    """`text` without URL credentials (`https://user:pw@host`) or secret environment values."""
    return scrub(_USERINFO.sub(r"\1***@", text))


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
