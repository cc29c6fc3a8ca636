"""Baseline files people review and commit (`--promptopt-update-baseline` writes one,
`--promptopt-baseline PATH` reads one): each suite's per-case outcomes keyed by stable case ids.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from .baseline import STATUSES, BaselineRun, BaselineSuite, CaseOutcome

__all__ = [
    "BASELINE_FILE_VERSION",
    "BaselineFileError",
    "merge_baseline",
    "read_baseline_file",
    "write_baseline_file",
]

BASELINE_FILE_VERSION = 1


def write_baseline_file(
    path: Path, current: Mapping[str, tuple[str, Sequence[CaseOutcome]]], files: Mapping[str, str] | None = None
) -> None:
    """Write the run's per-case outcomes and scores as a reviewed baseline file: readable JSON,
    suites by id and cases by their stable `case_id` (sorted, so a reordered suite diffs clean;
    no timestamp, so an unchanged run rewrites the same bytes). `files`: suite id -> the suite's
    file (relative to the rootdir), which a later partial update checks (`merge_baseline`)."""
    import json
    import os

    files = files or {}
    data = {
        "version": BASELINE_FILE_VERSION,
        "suites": {
            suite_id: {
                "name": name,
                **({"file": files[suite_id]} if suite_id in files else {}),
                "cases": {c.case_id: _case_entry(c) for c in sorted(cases, key=lambda c: c.case_id)},
            }
            for suite_id, (name, cases) in sorted(current.items())
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(temporary, path)  # atomic: a crash never leaves half a baseline


def merge_baseline(
    old: BaselineRun,
    current: Mapping[str, tuple[str, Sequence[CaseOutcome]]],
    not_selected: Mapping[str, Collection[str]],
    narrowed: Collection[str],
    collected_files: Collection[str],
    file_exists: Callable[[str], bool],
) -> tuple[dict[str, tuple[str, list[CaseOutcome]]], dict[str, str], list[str], int]:
    """What `--promptopt-update-baseline` writes when the old file exists: this run's suites
    replace theirs, except for the cases the run's selection left out (selection.py), which keep
    their old entries: those in `not_selected` (suite id -> case ids), and every old case that did
    not run of a suite in `narrowed` (a node id named its module: which were left out is not
    known). A suite this run did not run at all keeps its entry when the selection left it out, or
    when its file exists and was not collected (another path, a file that failed to load, --lf):
    a suite of a file this run collected that is not among its suites is gone (renamed), and so is
    one whose file is gone; an entry without a file (an older writer's) is kept. Returns (suites,
    their files, the suite ids kept whole, the number of cases kept beside a suite's new ones)."""
    merged: dict[str, tuple[str, list[CaseOutcome]]] = {k: (name, list(cases)) for k, (name, cases) in current.items()}
    files = {k: s.file for k, s in old.suites.items() if s.file}
    kept_suites: list[str] = []
    kept_cases = 0
    for suite_id, suite in old.suites.items():
        left_out = set(not_selected.get(suite_id, ()))
        if suite_id not in merged:
            away = suite.file is None or (file_exists(suite.file) and suite.file not in collected_files)
            if suite_id in not_selected or suite_id in narrowed or away:
                merged[suite_id] = (suite.name, list(suite.cases))
                kept_suites.append(suite_id)
        elif left_out or suite_id in narrowed:
            ran = {c.case_id for c in merged[suite_id][1]}
            kept = [c for c in suite.cases if c.case_id not in ran and (suite_id in narrowed or c.case_id in left_out)]
            merged[suite_id][1].extend(kept)
            kept_cases += len(kept)
    return merged, files, sorted(kept_suites), kept_cases


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
        file = suite.get("file")
        suites[suite_id] = BaselineSuite(
            suite_id, str(suite.get("name", suite_id)), cases, file=str(file) if file is not None else None
        )
    return BaselineRun(str(path), None, suites)
