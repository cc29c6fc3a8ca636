"""What each MLflow run holds: the tags, params, metrics, notes and case table of the session's
parent run, its suite runs and its repair runs, built from a `RunSummary` and `SessionMeta`.

Plain functions from the summary to dicts and text, with no MLflow call (runs.py makes those), so
a live session and `python -m pytest_promptopt upload` log the same layout. Every value passes
through `redact`/`scrub` or `safe_text` first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..redact import redact, redact_text, scrub
from ..summary import RunSummary, SuiteSummary
from .client import MAX_PARAM_VALUE, clean_tags, flag, metric_key, safe_text, truncate
from .prompts import parse_uri

__all__ = [
    "BASELINE_FILE",
    "CASES_DIR",
    "KIND_TAG",
    "LINKED_PROMPTS_TAG",
    "REPORT_FILE",
    "TABLE_COLUMNS",
    "TABLE_FILE",
    "TABLE_ROWS",
    "SessionMeta",
    "case_table",
    "parent_metrics",
    "parent_note",
    "parent_tags",
    "rendered_prompts",
    "repair_metrics",
    "repair_params",
    "repair_tags",
    "suite_metrics",
    "suite_params",
    "suite_tags",
    "templates",
]

TABLE_FILE = "cases.json"
CASES_DIR = "cases"  # a dataset suite's per-case Parquet parts, in its child run
TABLE_ROWS = 1000  # a dataset suite's rows are also logged as the `cases.json` table up to this many
REPORT_FILE = "promptopt-report.json"
BASELINE_FILE = "baseline_comparison.json"  # with --promptopt-baseline
KIND_TAG = "promptopt.kind"  # "repair" on a repair's child run (a suite's child run has none)
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # mlflow.tracing.constant.TraceTagKey.LINKED_PROMPTS
TABLE_COLUMNS = (
    "case_id",
    "name",
    "status",
    "passed",
    "error",
    "score",
    "reason",
    "vars",
    "prompt",
    "output",
    "scores",
    "named_scores",
    "model",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "calls",
    "cache_hits",
    "prompt_index",
    "test_index",
    "nodeid",
    "repeats",
    "repeat_passed",
    "flaky",
)
_JSON_COLUMNS = {"vars", "scores", "named_scores"}
_SUITE_FILE_LIMIT = 1_000_000
NOTE_SUITES = 20  # suites listed in the parent run's note; the JSON report artifact has them all


@dataclass
class SessionMeta:
    """What the parent run records about the pytest session (plain data: it is saved in pending files)."""

    started_ms: int
    ended_ms: int
    exit_status: int | None = None
    pytest_args: list[str] = field(default_factory=list)
    rootdir: str = ""
    git_commit: str | None = None
    git_branch: str | None = None
    ci: bool = False
    suite_files: dict[str, str] = field(default_factory=dict)  # suite file (as reported) -> its text

    @classmethod
    def collect(
        cls, run: RunSummary, *, rootdir: Path, pytest_args: list[str], started: float, exit_status: int | None
    ) -> SessionMeta:
        commit = _git(rootdir, "rev-parse", "HEAD")
        branch = _git(rootdir, "rev-parse", "--abbrev-ref", "HEAD")
        if branch in (None, "HEAD"):  # detached, as in most CI checkouts
            branch = next(
                (
                    os.environ[k]
                    for k in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "CI_COMMIT_REF_NAME")
                    if os.environ.get(k)
                ),
                None,
            )
        files: dict[str, str] = {}
        for suite in run.suites:
            path = rootdir / suite.info.file
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size <= _SUITE_FILE_LIMIT:
                    files[suite.info.file] = safe_text(redact_text(path.read_text(encoding="utf-8", errors="replace")))
        return cls(
            started_ms=int(started * 1000),
            ended_ms=int(time.time() * 1000),
            exit_status=exit_status,
            pytest_args=[safe_text(a) for a in pytest_args],
            rootdir=str(rootdir),
            git_commit=commit,
            git_branch=branch,
            ci=os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"),
            suite_files=files,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionMeta:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _git(rootdir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=rootdir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# --------------------------------------------------------------------------- the session's parent run


def parent_tags(run: RunSummary, meta: SessionMeta) -> dict[str, str]:
    from .. import __version__

    models = sorted({m for s in run.suites for m in s.models})
    tags = {
        "promptopt.session": "true",
        "promptopt.gates_passed": flag(run.gates_passed),
        "promptopt.exit_status": "" if meta.exit_status is None else str(meta.exit_status),
        "promptopt.ci": flag(meta.ci),
        "promptopt.pytest_args": shlex.join(meta.pytest_args),
        "promptopt.models": ", ".join(models),
        "promptopt.plugin_version": __version__,
        "promptopt.rootdir": meta.rootdir,
        "mlflow.note.content": parent_note(run),
    }
    if meta.git_commit:
        tags["mlflow.source.git.commit"] = meta.git_commit
    if meta.git_branch:
        tags["mlflow.source.git.branch"] = meta.git_branch
    if run.baseline is not None:  # --promptopt-baseline (mlflow/baseline.py)
        tags["promptopt.baseline"] = run.baseline.ref
        tags["promptopt.baseline_run_id"] = run.baseline.run_id or ""
    return clean_tags(tags)


def parent_metrics(run: RunSummary) -> dict[str, float | None]:
    passed = sum(s.passed for s in run.suites)
    failed = sum(s.failed for s in run.suites)
    repairs: dict[str, float | None] = {}
    if run.repairs:  # --promptopt-repair
        repairs = {"repairs": len(run.repairs), "repaired": sum(1 for r in run.repairs if r.status == "repaired")}
    return {
        **repairs,
        "suites": len(run.suites),
        "cases": sum(s.cases for s in run.suites),
        "passed": passed,
        "failed": failed,
        "errors": sum(s.errors for s in run.suites),
        "pass_rate": passed / (passed + failed) if passed + failed else None,
        "gates_failed": len(run.failed_gates()),
    }


def parent_note(run: RunSummary) -> str:
    """The parent run's description in the MLflow UI: the session's verdict, then one line per
    suite (pass rate, counts, gate verdicts), regression and repair. Everything else is in the
    JSON report artifact and the suite runs."""
    lines = ["gates passed" if run.gates_passed else "GATES FAILED"]
    lines += [_suite_line(s) for s in run.suites[:NOTE_SUITES]]
    if len(run.suites) > NOTE_SUITES:
        lines.append(f"... {len(run.suites) - NOTE_SUITES} more suites: see {REPORT_FILE}")
    lines += [f"{c.name}: regression against the baseline: {c.regression_reason}" for c in run.regressions()]
    lines += [f"repair of {r.suite_name} prompt {r.prompt_index}: {r.status}" for r in run.repairs]
    return "```\n" + "\n".join(lines) + "\n```"


def _suite_line(suite: SuiteSummary) -> str:
    rate = "-" if suite.pass_rate is None else f"{suite.pass_rate * 100:.1f}%"
    gates = "; ".join(
        f"{g.name} {'n/a' if g.value is None else f'{g.value:.3f}'} >= {g.threshold:g}: {'ok' if g.passed else 'FAILED'}"
        for g in suite.gates
    )
    counts = f"{suite.passed} passed, {suite.failed} failed, {suite.errors} errors"
    return f"{suite.info.name}: pass rate {rate} ({counts})" + (f"; {gates}" if gates else "")


# --------------------------------------------------------------------------- a suite's child run


def suite_tags(suite: SuiteSummary, parent: str, linked: Sequence[Mapping[str, str]]) -> dict[str, str]:
    tags = {
        "mlflow.parentRunId": parent,
        "promptopt.suite": suite.info.name,
        "promptopt.suite_id": suite.info.id,  # the key a later baseline comparison matches on
        "promptopt.suite_file": suite.info.file,
        "promptopt.models": ", ".join(suite.models),
        "promptopt.gates_passed": flag(suite.gates_passed),
        **{f"promptopt.gate.{metric_key(g.name)}": "passed" if g.passed else "failed" for g in suite.gates},
    }
    if suite.cases_file is not None:  # a dataset suite: its rows are the `cases/` artifacts
        tags["promptopt.dataset"] = "true"
        tags["promptopt.cases_file"] = suite.cases_file
    if linked:  # MLflow's own link from a run to the prompt versions it used (the UI shows it)
        tags[LINKED_PROMPTS_TAG] = json.dumps(list(linked))
    return clean_tags(tags)


def templates(suite: SuiteSummary) -> dict[int, str]:
    """A suite's prompt templates by prompt index."""
    found: dict[int, str] = dict(suite.dataset.templates) if suite.dataset is not None else {}
    for result in suite.results:
        if result.template is not None:
            found.setdefault(result.prompt_index or 0, result.template)
    return dict(sorted(found.items()))


def suite_params(suite: SuiteSummary, templates: Mapping[int, str]) -> dict[str, str]:
    params = {
        "suite_name": suite.info.name,
        "suite_file": suite.info.file,
        "suite_kind": suite.info.kind,
        "model": ", ".join(suite.models),
    }
    for index, template in templates.items():
        params[f"prompt.{index}.template"] = template
        params[f"prompt.{index}.sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
    model_params: dict[str, Any] = {}
    for result in suite.results:
        model_params.setdefault(result.model or "model", result.model_params)
    for model, values in model_params.items():
        params[f"model_params.{metric_key(model)}"] = json.dumps(redact(values), sort_keys=True, default=str)
    for gate in suite.gates:
        params[f"gate.{metric_key(gate.name)}.threshold"] = f"{gate.threshold:g}"
    return {k: truncate(scrub(str(v)), MAX_PARAM_VALUE) for k, v in params.items()}


def suite_metrics(suite: SuiteSummary, run_baseline: Any = None) -> dict[str, float | None]:
    totals = suite.totals()
    metrics: dict[str, float | None] = {
        "pass_rate": suite.pass_rate,
        "mean_score": suite.mean_score(),
        "cases": suite.cases,
        "passed": suite.passed,
        "failed": suite.failed,
        "errors": suite.errors,
        "latency_p50_ms": suite.latency_percentile(0.5),
        "latency_p95_ms": suite.latency_percentile(0.95),
        "prompt_tokens": totals["prompt_tokens"],
        "completion_tokens": totals["completion_tokens"],
        "cost": totals["cost"],
        "calls": totals["calls"],
        "cache_hits": totals["cache_hits"],
        "duration_s": totals["duration_s"],
    }
    if suite.repeats > 1:
        metrics.update({"repeats": suite.repeats, "pass_k": suite.pass_k, "flaky": len(suite.flaky)})
    metrics.update({f"metric.{metric_key(name)}": value for name, value in suite.metric_means().items()})
    metrics.update({f"gate.{metric_key(g.name)}": g.value for g in suite.gates})
    compared = run_baseline.suites.get(suite.info.id) if run_baseline is not None else None
    if compared is not None:
        metrics.update({"baseline_pass_rate": compared.baseline_pass_rate, "pass_rate_delta": compared.delta})
    return metrics


def case_table(results: Sequence[Any]) -> dict[str, list[Any]]:
    """One row per case; the MLflow UI shows it (log_table). JSON columns stay strings so every
    cell is a scalar the UI can filter."""
    rows = [redact({**r.to_dict(), "status": r.status}) for r in results]
    return {
        column: [
            json.dumps(row.get(column), ensure_ascii=False, sort_keys=True, default=str)
            if column in _JSON_COLUMNS
            else row.get(column)
            for row in rows
        ]
        for column in TABLE_COLUMNS
    }


def rendered_prompts(suite: SuiteSummary) -> str:
    parts = [f"# {suite.info.name}: rendered prompts\n"]
    for result in suite.results:
        parts.append(f"## {result.name} ({result.case_id})\n\n```\n{result.prompt}\n```\n")
    return scrub("\n".join(parts))


# --------------------------------------------------------------------------- a repair's child run


def repair_tags(repair: Any, parent: str, registry_uri: str | None) -> dict[str, str]:
    tags = {
        "mlflow.parentRunId": parent,
        KIND_TAG: "repair",
        # Not `promptopt.suite`: a baseline comparison reads the runs with that tag as suites.
        "promptopt.repair.suite": repair.suite_name,
        "promptopt.repair.suite_id": repair.suite,
        "promptopt.repair.status": repair.status,
        "mlflow.note.content": _repair_note(repair, registry_uri),
    }
    if registry_uri is not None:
        name, version, _ = parse_uri(registry_uri)
        tags["promptopt.repair.registry_uri"] = registry_uri
        tags[LINKED_PROMPTS_TAG] = json.dumps([{"name": name, "version": str(version)}])
    if repair.file:
        tags["promptopt.repair.file"] = repair.file
    return clean_tags(tags)


def _repair_note(repair: Any, registry_uri: str | None) -> str:
    """A repair run's description: its verdict, the held-out pass rates and where the proposal is."""
    by = f" by {repair.optimizer}" if repair.optimizer else ""
    lines = [f"{repair.suite_name} prompt {repair.prompt_index}: {repair.status}{by}"]
    if repair.heldout_before is not None and repair.heldout_after is not None:
        lines.append(f"held-out {repair.heldout_before.describe()} -> {repair.heldout_after.describe()}")
    if repair.reason:
        lines.append(repair.reason)
    if repair.file:
        lines.append(f"proposal: {repair.file}" + (" (applied)" if repair.applied else ""))
    if registry_uri:
        lines.append(f"registered: {registry_uri} (alias candidate)")
    return "\n".join(lines)


def repair_params(repair: Any) -> dict[str, str]:
    params = {
        "suite": repair.suite_name,
        "suite_id": repair.suite,
        "prompt_index": repair.prompt_index,
        "model": repair.model,
        "optimizer": repair.optimizer,
        "seed": repair.seed,
        "budget": repair.budget,
        "status": repair.status,
        "reason": repair.reason,
        "weak_estimate": flag(repair.weak_estimate),
        "applied": flag(repair.applied),
        "heldout_cases": len(repair.heldout_cases),
        "insample_cases": len(repair.insample_cases),
    }
    return {k: truncate(safe_text(str(v)), MAX_PARAM_VALUE) for k, v in params.items() if v != ""}


def repair_metrics(repair: Any) -> dict[str, float | None]:
    def rate(score: Any) -> float | None:
        return None if score is None else score.pass_rate

    return {
        "heldout_before": rate(repair.heldout_before),
        "heldout_after": rate(repair.heldout_after),
        "insample_before": rate(repair.insample_before),
        "insample_after": rate(repair.insample_after),
        "calls_task": repair.calls.task_calls,
        "calls_proposer": repair.calls.proposer_calls,
        "calls_judge": repair.calls.judge_calls,
        "calls_projected": repair.projected.total,
        "tokens_task": repair.calls.task_tokens,
        "tokens_proposer": repair.calls.proposer_tokens,
        "tokens_judge": repair.calls.judge_tokens,
        "cache_hits": repair.calls.cache_hits,
        "duration_s": repair.duration_s,
    }
