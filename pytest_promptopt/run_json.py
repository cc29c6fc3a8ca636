"""A `RunSummary` as the JSON report document and back (`schemas/report.schema.json`).

`report_dict` is what `--promptopt-report` writes (report/json_report.py), what the MLflow parent
run keeps as `promptopt-report.json` and what a pending-upload file holds; `run_from_report`
rebuilds the `RunSummary` from such a document, so a saved run is sent to MLflow later by the
same code that sends a live one. Plain data in, plain data out: no reporter, no MLflow.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

from .baseline import BaselineComparison
from .case_stats import CaseStats, DatasetPart
from .gates import Gate
from .mathexpr import DerivedMetric
from .records import CaseResult
from .redact import redact
from .repair_result import RepairResult
from .suite_info import SuiteInfo
from .summary import RunSummary, SuiteSummary, summarize_suites

__all__ = ["REPORT_VERSION", "report_dict", "run_from_report", "suite_dict"]

REPORT_VERSION = 1


def suite_dict(s: SuiteSummary, baseline: BaselineComparison | None = None) -> dict[str, Any]:
    totals = s.totals()
    data = {
        "name": s.info.name,
        "id": s.info.id,
        "file": s.info.file,
        "kind": s.info.kind,
        "model": ", ".join(s.models),
        "cases": s.cases,
        "passed": s.passed,
        "failed": s.failed,
        "errors": s.errors,
        "pass_rate": s.pass_rate,
        "repeats": s.repeats,
        "pass_k": s.pass_k,
        "flaky": len(s.flaky),
        "mean_score": s.mean_score(),
        "metrics": s.metric_means(),
        **(
            {"derived_metrics": [{"name": m.name, "value": m.expression} for m in s.info.derived_metrics]}
            if s.info.derived_metrics
            else {}
        ),
        "intervals": {name: None if found is None else list(found) for name, found in s.intervals().items()},
        "gates": [g.to_dict() for g in s.gates],
        "gates_passed": s.gates_passed,
        "latency_ms": {"p50": s.latency_percentile(0.5), "p95": s.latency_percentile(0.95)},
        "tokens": {"prompt": totals["prompt_tokens"], "completion": totals["completion_tokens"]},
        "cost": totals["cost"],
        "calls": totals["calls"],
        "cache_hits": totals["cache_hits"],
        "duration_s": totals["duration_s"],
        "results": [redact(r.to_dict()) for r in s.results],
        "cases_file": s.cases_file,
    }
    if s.dataset is not None:  # what `run_from_report` rebuilds a dataset suite from (no rows here)
        data["stats"] = s.dataset.stats.to_dict()
        data["source"] = s.dataset.source
    if baseline is not None:  # --promptopt-baseline: null when the baseline could not be loaded
        compared = baseline.suites.get(s.info.id)
        data["baseline"] = None if compared is None else redact(compared.to_dict())
    return data


def finite_numbers(value: Any) -> Any:
    """`value` with NaN and the infinities as null (`JSON.stringify`'s rule), so the document is
    valid JSON: a var `.inf` or a check's NaN score must not write `Infinity` into a report."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_numbers(v) for v in value]
    return value


def report_dict(run: RunSummary, *, exit_status: int | None = None) -> dict[str, Any]:
    from . import __version__

    data = {
        "version": REPORT_VERSION,
        "plugin_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gates_passed": run.gates_passed,
        "exit_status": exit_status,
        "suites": [suite_dict(s, run.baseline) for s in run.suites],
    }
    if run.baseline is not None:
        # the suites' comparisons are in each suite's entry (suite_dict), not repeated here
        data["baseline"] = {k: v for k, v in run.baseline.to_dict().items() if k != "suites"}
    # --promptopt-repair: one entry per repaired prompt (or skipped suite); [] without repair.
    data["repairs"] = [redact(r.to_dict()) for r in run.repairs]
    return data


def run_from_report(data: dict[str, Any]) -> RunSummary:
    """The `RunSummary` a report was written from (gates re-decided from the same results), so a
    saved report can be sent to MLflow later by the same code that sends a live run."""
    records = []
    for suite in data.get("suites", []):
        info = SuiteInfo(
            id=suite.get("id") or suite["name"],
            name=suite["name"],
            file=suite["file"],
            gates=tuple(Gate.from_dict(g) for g in suite.get("gates", [])),
            kind=suite.get("kind", "file"),
            derived_metrics=tuple(DerivedMetric(m["name"], m["value"]) for m in suite.get("derived_metrics", ())),
        )
        records.extend((info, CaseResult.from_dict(result)) for result in suite["results"])
        if suite.get("stats") is not None and suite.get("cases_file"):
            records.append(
                (info, DatasetPart(CaseStats.from_dict(suite["stats"]), suite["cases_file"], suite.get("source") or ""))
            )
    baseline = None
    if data.get("baseline"):  # the comparison travels with a pending run
        top = data["baseline"]
        suites = {s.get("id") or s["name"]: s["baseline"] for s in data.get("suites", []) if s.get("baseline")}
        baseline = BaselineComparison.from_dict({**top, "suites": suites})  # the suites' comparisons are kept per suite
    repairs = tuple(RepairResult.from_dict(r) for r in data.get("repairs") or [])  # they travel with a pending run too
    return RunSummary(summarize_suites(records), baseline, repairs, data.get("exit_status"))
