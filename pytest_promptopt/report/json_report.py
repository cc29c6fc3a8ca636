"""The JSON report (`--promptopt-report PATH`): the document of run_json.py, written to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..run_json import finite_numbers, report_dict
from ..summary import RunSummary

__all__ = ["write_report"]


def write_report(path: Path, run: RunSummary, *, exit_status: int | None = None) -> None:
    """Write atomically, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            finite_numbers(report_dict(run, exit_status=exit_status)),
            indent=2,
            ensure_ascii=False,
            default=str,
            allow_nan=False,
        ),
        encoding="utf-8",
    )
    os.replace(tmp, path)
