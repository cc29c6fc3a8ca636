"""Baseline files people review and commit (`--promptopt-update-baseline` writes one,
`--promptopt-baseline PATH` reads one): each suite's per-case outcomes keyed by stable case ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .baseline import STATUSES, BaselineRun, BaselineSuite, CaseOutcome

__all__ = ["BASELINE_FILE_VERSION", "BaselineFileError", "read_baseline_file", "write_baseline_file"]

BASELINE_FILE_VERSION = 1


def write_baseline_file(path: Path, current: Mapping[str, tuple[str, Sequence[CaseOutcome]]]) -> None:
    """Write the run's per-case outcomes and scores as a reviewed baseline file: readable JSON,
    suites by id and cases by their stable `case_id` (sorted, so a reordered suite diffs clean;
    no timestamp, so an unchanged run rewrites the same bytes)."""
    import json
    import os

    data = {
        "version": BASELINE_FILE_VERSION,
        "suites": {
            suite_id: {
                "name": name,
                "cases": {c.case_id: _case_entry(c) for c in sorted(cases, key=lambda c: c.case_id)},
            }
            for suite_id, (name, cases) in sorted(current.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)  # atomic: a crash never leaves half a baseline


def _case_entry(case: CaseOutcome) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": case.name,
        "status": case.status,
        "output": case.output,
        "scores": dict(sorted(case.named_scores.items())),
    }
    if case.repeats > 1:  # only then: a file without repeats keeps its bytes
        entry.update(repeats=case.repeats, repeat_passed=case.samples_passed)
    return entry


class BaselineFileError(ValueError):
    """A baseline file that cannot be read; the message names the file and the fix."""


def read_baseline_file(path: Path) -> BaselineRun:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BaselineFileError(
            f"{path}: cannot read the baseline file ({exc.strerror}); write one with --promptopt-update-baseline"
        ) from None
    except ValueError as exc:
        raise BaselineFileError(
            f"{path}: not valid JSON ({exc}); rewrite it with --promptopt-update-baseline"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("version") != BASELINE_FILE_VERSION
        or not isinstance(data.get("suites"), dict)
    ):
        raise BaselineFileError(
            f"{path}: not a pytest-promptopt baseline file (version {BASELINE_FILE_VERSION} with 'suites'); "
            "rewrite it with --promptopt-update-baseline"
        )
    suites = {}
    for suite_id, suite in data["suites"].items():
        try:
            cases = [
                CaseOutcome(
                    case_id,
                    str(c.get("name", case_id)),
                    str(c["status"]),
                    c.get("output"),
                    dict(c.get("scores") or {}),
                    int(c.get("repeats", 1)),
                    None if c.get("repeat_passed") is None else int(c["repeat_passed"]),
                )
                for case_id, c in suite["cases"].items()
            ]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise BaselineFileError(
                f"{path}: suites.{suite_id}: malformed case entry ({exc}); rewrite it with --promptopt-update-baseline"
            ) from None
        bad = next((c for c in cases if c.status not in STATUSES), None)
        if bad is not None:
            raise BaselineFileError(
                f"{path}: suites.{suite_id}.cases.{bad.case_id}.status: {bad.status!r} is not one of {', '.join(STATUSES)}"
            )
        suites[suite_id] = BaselineSuite(suite_id, str(suite.get("name", suite_id)), cases)
    return BaselineRun(str(path), None, suites)
