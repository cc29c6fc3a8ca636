"""Reporting a session to MLflow without ever failing it: `report_run` logs the run, or keeps it
in a pending-upload file (the JSON report plus where it was going) when logging fails;
`upload_pending` (`python -m pytest_promptopt upload`) later sends such a file, or any JSON
report, through the same `log_run` as a live session.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..run_json import report_dict, run_from_report
from ..summary import RunSummary
from .client import MlflowReportError, MlflowSettings, one_line, safe_uri
from .layout import SessionMeta
from .runs import Logged, log_run

__all__ = ["PENDING_KEY", "Outcome", "report_run", "upload_pending", "write_pending"]

PENDING_KEY = "mlflow"  # what a pending-upload file adds to the JSON report


@dataclass
class Outcome:
    """The result of `report_run`: logged, or failed with the run kept in a pending file."""

    logged: Logged | None = None
    error: str | None = None
    pending: Path | None = None

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


def report_run(
    run: RunSummary, meta: SessionMeta, target: MlflowSettings, *, artifacts: Sequence[Path] = ()
) -> Outcome:
    """Log `run`; on any failure keep it in a pending-upload file instead. Never raises: the
    tests already ran and gated, and reporting must not change that. `artifacts` (the HTML
    report) are logged to the parent run under their file names."""
    artifact_location = _local_artifacts(target)
    try:
        logged = log_run(
            run,
            meta,
            target.tracking_uri,
            target.experiment,
            artifact_location=artifact_location,
            artifacts=artifacts,
            traces=target.traces,
            prompt_prefix=target.prompt_prefix,
        )
    except Exception as exc:  # any MLflow, network or database fault
        error = f"MLflow reporting failed ({safe_uri(target.tracking_uri)}): {one_line(exc)}"
        try:
            pending = write_pending(target.pending_dir, run, meta, target, error=error)
        except OSError as write_error:
            return Outcome(error=f"{error}; the results could not be kept either: {write_error}")
        return Outcome(error=error, pending=pending)
    return Outcome(logged=logged)


def write_pending(
    directory: Path, run: RunSummary, meta: SessionMeta, target: MlflowSettings, *, error: str = ""
) -> Path:
    """The JSON report plus what `upload` needs (target, session metadata), written atomically."""
    data = report_dict(run, exit_status=meta.exit_status)
    data[PENDING_KEY] = {
        "tracking_uri": safe_uri(target.tracking_uri),
        "experiment": target.experiment,
        "artifact_location": _local_artifacts(target),
        "prompt_prefix": target.prompt_prefix,
        "error": error,
        "session": meta.to_dict(),
    }
    directory.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = directory / f"{stamp}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def upload_pending(path: Path, *, tracking_uri: str | None = None, experiment: str | None = None) -> Logged:
    """Send a pending-upload file (or any JSON report) to MLflow with the same code as a live run.

    The tracking URI is `tracking_uri`, else $MLFLOW_TRACKING_URI, else the one the file records.
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
    same_store = uri == saved.get("tracking_uri")
    return log_run(
        run_from_report(data),
        meta,
        uri,
        name,
        artifact_location=saved.get("artifact_location") if same_store else None,
        prompt_prefix=saved.get("prompt_prefix") or "",
    )


def _local_artifacts(target: MlflowSettings) -> str | None:
    """Artifacts of the project's own store live next to it (MLflow would use ./mlruns of the cwd)."""
    if not target.local_store:
        return None
    db = Path(target.tracking_uri[len("sqlite:///") :])
    return (db.parent / "mlruns").as_uri()
