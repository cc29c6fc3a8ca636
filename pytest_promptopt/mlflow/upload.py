"""Reporting a session to MLflow without ever failing it or losing it: `report_run` first keeps
the run in a pending-upload file (the JSON report plus where it was going), then logs it and
removes the file; a run that could not be logged stays in the file. `upload_pending`
(`python -m pytest_promptopt upload`) later sends such a file, or any JSON report, through the
same `log_run` as a live session. The file records the session run's id as soon as MLflow
created it, so `upload` marks a run cut short (a server that died mid-run) FAILED, and never
logs twice a run that did finish.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..run_json import report_dict, run_from_report
from ..summary import RunSummary
from .client import MlflowReportError, MlflowSettings, mlflow_calls, one_line, safe_uri
from .layout import KIND_TAG, SessionMeta
from .runs import Logged, RenderedRun, log_run

__all__ = ["PENDING_KEY", "Outcome", "record_run_id", "report_run", "upload_pending", "write_pending"]

PENDING_KEY = "mlflow"  # what a pending-upload file adds to the JSON report
RUN_ID_KEY = "session_run_id"  # in PENDING_KEY: the parent run MLflow created for it, once it exists
_NO_RUN_ID = f'"{RUN_ID_KEY}": null'  # as json.dumps writes it; PENDING_KEY comes first in the file


@dataclass
class Outcome:
    """The result of `report_run`: logged, or failed with the run kept in a pending file."""

    logged: Logged | None = None
    error: str | None = None
    pending: Path | None = None
    interrupted: bool = False  # a Ctrl-C stopped the logging (writer.py)

    def warnings(self) -> list[str]:
        found = [f"{self.logged.describe()}: {p}" for p in self.logged.problems] if self.logged else []
        if self.error:
            kept = (
                f"; results kept in {self.pending}, send them later with "
                f"`python -m pytest_promptopt upload {self.pending}`"
                if self.pending
                else ""
            )
            found.append(self.error + kept)
        return found

    def lines(self) -> list[str]:
        if self.logged is not None:
            return [self.logged.describe()]
        lines = [self.error or "MLflow reporting failed"]
        if self.pending is not None:
            lines.append(
                f"results kept in {self.pending}; send them later with: "
                f"python -m pytest_promptopt upload {self.pending}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Plain data (it crosses from the background writer, writer.py)."""
        return {
            "logged": asdict(self.logged) if self.logged is not None else None,
            "error": self.error,
            "pending": str(self.pending) if self.pending is not None else None,
            "interrupted": self.interrupted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        logged = data.get("logged")
        registered = {int(k): v for k, v in (logged or {}).get("registered", {}).items()}
        return cls(
            logged=Logged(**{**logged, "registered": registered}) if logged else None,
            error=data.get("error"),
            pending=Path(data["pending"]) if data.get("pending") else None,
            interrupted=bool(data.get("interrupted")),
        )


def report_run(
    run: RunSummary,
    meta: SessionMeta,
    target: MlflowSettings,
    *,
    artifacts: Sequence[Path] = (),
    pending: Path | None = None,
    rendered: RenderedRun | None = None,
) -> Outcome:
    """Log `run`, kept in a pending-upload file until it is logged (`pending`: already written,
    by the session). Never raises an `Exception`: the tests already ran and gated, and reporting
    must not change that. A `BaseException` (Ctrl-C, the writer stopped) leaves the file, and
    the run, if MLflow created it, marked FAILED where the store can still be reached.
    `artifacts` (the HTML report) are logged to the parent run under their file names."""
    kept_error = None
    if pending is None:
        try:
            pending = write_pending(target.pending_dir, run, meta, target)
        except OSError as exc:  # a read-only project: log anyway, and say so only if that fails too
            kept_error = exc
    try:
        logged = log_run(
            run,
            meta,
            target.tracking_uri,
            target.experiment,
            artifact_location=_local_artifacts(target),
            artifacts=artifacts,
            traces=target.traces,
            prompt_prefix=target.prompt_prefix,
            on_parent=_recorder(pending),
            rendered=rendered,
        )
    except Exception as exc:  # any MLflow, network or database fault
        cause = one_line(exc, on=f"experiment '{target.experiment}'")
        error = f"MLflow reporting failed ({safe_uri(target.tracking_uri)}): {cause}"
        if pending is None:
            return Outcome(error=f"{error}; the results could not be kept either: {kept_error}")
        with contextlib.suppress(OSError):
            _set_error(pending, error)
        return Outcome(error=error, pending=pending)
    if pending is not None:
        pending.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # no pending folder left behind when nothing is pending
            pending.parent.rmdir()
    return Outcome(logged=logged)


def write_pending(
    directory: Path,
    run: RunSummary,
    meta: SessionMeta,
    target: MlflowSettings,
    *,
    error: str = "",
    report: Mapping[str, Any] | None = None,
) -> Path:
    """The JSON report plus what `upload` needs (target, session metadata, and the session
    run's id once MLflow created it: `record_run_id`), written atomically, on one line (the
    session writes it before handing the run over: json's C encoder takes a fifth of the time
    of an indented dump). `report`: `report_dict(run)`, when the caller has it."""
    data = {
        PENDING_KEY: {
            RUN_ID_KEY: None,
            "tracking_uri": safe_uri(target.tracking_uri),
            "experiment": target.experiment,
            "artifact_location": _local_artifacts(target),
            "prompt_prefix": target.prompt_prefix,
            "error": error,
            "session": meta.to_dict(),
        },
        **(report if report is not None else report_dict(run, exit_status=meta.exit_status)),
    }
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}.json"
    _replace(path, json.dumps(data, ensure_ascii=False, default=str))
    return path


def record_run_id(path: Path, run_id: str) -> None:
    """Write into pending file `path` the id of the session run MLflow created for it, so a run
    cut short can be told apart later (`upload_pending`). The id goes in the place the file
    keeps for it, without parsing and writing the whole report again."""
    text = path.read_text(encoding="utf-8")
    if _NO_RUN_ID in text[:200]:  # `write_pending` puts it first
        text = text.replace(_NO_RUN_ID, f'"{RUN_ID_KEY}": {json.dumps(run_id)}', 1)
    else:  # a file written otherwise: rewrite it
        data = json.loads(text)
        data.setdefault(PENDING_KEY, {})[RUN_ID_KEY] = run_id
        text = json.dumps(data, ensure_ascii=False, default=str)
    _replace(path, text)


def _recorder(pending: Path | None) -> Any:
    """`log_run`'s `on_parent`: the run id into the pending file (a file that cannot be written
    then is no reason not to log the run)."""
    if pending is None:
        return None

    def record(run_id: str) -> None:
        with contextlib.suppress(OSError):
            record_run_id(pending, run_id)

    return record


def _set_error(path: Path, error: str) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.setdefault(PENDING_KEY, {})["error"] = error
    _replace(path, json.dumps(data, ensure_ascii=False, default=str))


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def upload_pending(path: Path, *, tracking_uri: str | None = None, experiment: str | None = None) -> Logged:
    """Send a pending-upload file (or any JSON report) to MLflow with the same code as a live run.

    The tracking URI is `tracking_uri`, else $MLFLOW_TRACKING_URI, else the one the file records.
    A fault raises `MlflowReportError` with one line that names the URI without credentials.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    saved = data.get(PENDING_KEY) or {}
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or saved.get("tracking_uri")
    name = experiment or saved.get("experiment")
    if not uri or not name:
        raise MlflowReportError(f"{path} does not record where it was going; pass --tracking-uri and --experiment")
    if "session" in saved:
        meta = SessionMeta.from_dict(saved["session"])
    else:  # a plain JSON report: only its creation time is known
        created = (
            _dt.datetime.fromisoformat(data["created"]).timestamp() * 1000
            if data.get("created")
            else time.time() * 1000
        )
        meta = SessionMeta(started_ms=int(created), ended_ms=int(created), exit_status=data.get("exit_status"))
    try:
        return _log_pending(data, uri, name, meta)
    except MlflowReportError:
        raise
    except Exception as exc:  # any MLflow, network or database fault: one line, as a session reports it
        cause = one_line(exc, on=f"experiment '{name}'")
        raise MlflowReportError(f"{safe_uri(uri)}: {cause}") from None


def _log_pending(data: dict[str, Any], uri: str, name: str, meta: SessionMeta) -> Logged:
    saved = data.get(PENDING_KEY) or {}
    same_store = uri == saved.get("tracking_uri")
    cut_short = saved.get(RUN_ID_KEY)
    if cut_short:
        finished = _settle(uri, cut_short)
        if finished is not None:  # it was logged in full; only the file was left behind
            return finished
    logged = log_run(
        run_from_report(data),
        meta,
        uri,
        name,
        artifact_location=saved.get("artifact_location") if same_store else None,
        prompt_prefix=saved.get("prompt_prefix") or "",
    )
    if cut_short:
        with mlflow_calls(), contextlib.suppress(Exception):  # a label for people; the states are set
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).set_tag(cut_short, "promptopt.uploaded_as", logged.parent_run_id)
    return logged


def _settle(uri: str, run_id: str) -> Logged | None:
    """The session run a pending file's session created before it was cut short, in the store at
    `uri`: when it finished after all (the process ended before removing the file), it as
    `Logged`; else None, after marking it and its unfinished child runs FAILED. A run this store
    does not hold (the file is sent elsewhere) is left alone."""
    with mlflow_calls():
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=uri)
        try:
            found = client.get_run(run_id)
        except MlflowException:
            return None
        children = client.search_runs(
            [found.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1000
        )
        if found.info.status == "FINISHED":
            experiment = client.get_experiment(found.info.experiment_id)
            suites = {
                r.data.tags.get("promptopt.suite_id", r.info.run_name): r.info.run_id
                for r in children
                if r.data.tags.get(KIND_TAG) != "repair"
            }
            repairs = [r.info.run_id for r in children if r.data.tags.get(KIND_TAG) == "repair"]
            return Logged(safe_uri(uri), experiment.name, experiment.experiment_id, run_id, suites, [], repairs)
        for run in [*children, found]:
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, "FAILED")
    return None


def _local_artifacts(target: MlflowSettings) -> str | None:
    """Artifacts of the project's own store live next to it (MLflow would use ./mlruns of the cwd)."""
    if not target.local_store:
        return None
    db = Path(target.tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlruns").as_uri()
