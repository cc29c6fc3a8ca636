"""What each MLflow run holds: the names, tags, params, metrics, notes, dataset and case table of
the session's parent run and its suite runs, built from a `RunSummary` and `SessionMeta` (a
repair's run: repair_layout.py; a case's trace: trace_build.py).

Plain functions from the summary to dicts and text, with no MLflow call (runs.py makes those), so
a live session and `python -m pytest_promptopt upload` log the same layout. Every value passes
through `redact`/`scrub` or `safe_text` first.

The runs are shaped for MLflow 3's evaluation views (docs/mlflow.md): suite runs list under an
experiment's "Evaluation runs" with their metrics, their suite as the Dataset and the git commit
as Source and Version; run names tell sessions apart (suite, branch@commit, time); metrics are
rounded for display (the JSON report artifact keeps full precision, and a baseline reads the case
tables, never the metrics).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import getpass
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
from ..summary import RunSummary, SuiteSummary, incomplete_reason
from ..wording import counted
from .client import MAX_PARAM_VALUE, clean_tags, flag, metric_key, safe_text, truncate

__all__ = [
    "BASELINE_FILE",
    "CASES_DIR",
    "DISPLAY_DECIMALS",
    "KIND_TAG",
    "LINKED_PROMPTS_TAG",
    "REPORT_FILE",
    "RUN_TYPE",
    "SUMMARY_FILE",
    "TABLE_COLUMNS",
    "TABLE_FILE",
    "TABLE_ROWS",
    "SessionMeta",
    "case_table",
    "display_metrics",
    "parent_metrics",
    "gate_text",
    "parent_note",
    "parent_tags",
    "rendered_prompts",
    "run_name",
    "source_tags",
    "suite_dataset",
    "suite_metrics",
    "suite_params",
    "session_verdict",
    "suite_summary_table",
    "suite_tags",
    "suite_times",
    "templates",
    "version_label",
]

TABLE_FILE = "cases.json"
CASES_DIR = "cases"  # a dataset suite's per-case Parquet parts, in its child run
TABLE_ROWS = 1000  # a dataset suite's rows are also logged as the `cases.json` table up to this many
REPORT_FILE = "promptopt-report.json"
SUMMARY_FILE = "summary.md"  # the parent run's per-suite table (Markdown: the artifact view renders it)
BASELINE_FILE = "baseline_comparison.json"  # with --promptopt-baseline
KIND_TAG = "promptopt.kind"  # "repair" on a repair's child run (a suite's child run has none)
LEFT_OUT_TAG = "promptopt.left_out"  # what the selection left out: "0", a count, or "unknown"
LINKED_PROMPTS_TAG = "mlflow.linkedPrompts"  # mlflow.tracing.constant.TraceTagKey.LINKED_PROMPTS
# mlflow.utils.mlflow_tags.MLFLOW_RUN_TYPE_GENAI_EVALUATE, what `mlflow.genai.evaluate` tags its run
# with (not "test": the Evaluation runs tab cannot compare such runs)
RUN_TYPE = ("mlflow.runType", "genai_evaluate")
DISPLAY_DECIMALS = 4  # metrics as MLflow shows them: 0.8654, not 0.8653846153846154
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
NOTE_LINES = 5  # failed gates (and repairs) listed in the parent run's description; summary.md has them all


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
    stopped_early: bool = False  # pytest stopped at -x / --maxfail (its exit status is still 1)
    left_out: dict[str, int] = field(default_factory=dict)  # suite id -> cases not selected (selection.py)
    partial: str | None = None  # what the selection left out, in words (`LeftOut.describe`); None: nothing
    narrowed: list[str] = field(default_factory=list)  # suites whose left-out cases are not known
    user: str | None = None  # who ran the session (MLflow's "Created by"), kept for a later upload

    @property
    def incomplete(self) -> str | None:
        """Why pytest did not run the whole session, or None (`summary.incomplete_reason`)."""
        return incomplete_reason(self.exit_status, self.stopped_early)

    @classmethod
    def collect(
        cls,
        run: RunSummary,
        *,
        rootdir: Path,
        pytest_args: list[str],
        started: float,
        exit_status: int | None,
        stopped_early: bool = False,
        left_out: Mapping[str, int] | None = None,
        partial: str | None = None,
        narrowed: Sequence[str] = (),
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
            stopped_early=stopped_early,
            left_out=dict(left_out or {}),
            partial=partial,
            narrowed=list(narrowed),
            user=_user(),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionMeta:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _user() -> str | None:
    """The login name, as MLflow's own runs record it (`mlflow.user`, from `getpass.getuser()`);
    None where the process has none (a container user without a passwd entry or LOGNAME)."""
    try:
        return getpass.getuser() or None
    except (OSError, KeyError, ImportError):
        return None


def _git(rootdir: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=rootdir, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


# --------------------------------------------------------------------------- names, source, times


def version_label(meta: SessionMeta) -> str:
    """`main@59b0d1b`: the branch and short commit the session ran on (what git could tell)."""
    commit = (meta.git_commit or "")[:7]
    if meta.git_branch and commit:
        return f"{meta.git_branch}@{commit}"
    return meta.git_branch or commit


def run_name(subject: str, meta: SessionMeta, at_ms: int) -> str:
    """A run name a person can tell apart in MLflow's run lists and "compare to" menus: what it
    is, the branch@commit and the local time it started (`capitals main@59b0d1b 2025-12-06 08:41:03`)."""
    when = _dt.datetime.fromtimestamp(at_ms / 1000).strftime("%Y-%m-%d %H:%M:%S")
    return " ".join(part for part in (subject, version_label(meta), when) if part)


def source_tags(meta: SessionMeta) -> dict[str, str]:
    """MLflow's source tags: the run lists' Source (`<project>@<commit>`) and Version (the commit)
    columns, the git branch, and who ran the session."""
    commit = (meta.git_commit or "")[:7]
    project = Path(meta.rootdir).name if meta.rootdir else "pytest-promptopt"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": f"{project}@{commit}" if commit else project}
    if meta.user:  # MLflow's run pages show it as "Created by" (else "unknown")
        tags["mlflow.user"] = meta.user
    if meta.git_commit:
        tags["mlflow.source.git.commit"] = meta.git_commit
    if meta.git_branch:
        tags["mlflow.source.git.branch"] = meta.git_branch
    return tags


def suite_times(suite: SuiteSummary, meta: SessionMeta) -> tuple[int, int]:
    """When a suite's cases ran (ms): from the first case's start to the last one's end. Suites
    without case times (a dataset suite, a report written before they were kept) take the session's."""
    spans = [(r.started_at, r.started_at + r.duration_s) for r in suite.results if r.started_at]
    if not spans:
        return meta.started_ms, meta.ended_ms
    start = int(min(s for s, _ in spans) * 1000)
    return start, max(start, int(max(e for _, e in spans) * 1000))


def display_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    """Metrics rounded for MLflow's tables and charts (None values stay, log_batch leaves them out)."""
    return {k: None if v is None else round(float(v), DISPLAY_DECIMALS) for k, v in metrics.items()}


# --------------------------------------------------------------------------- the session's parent run


def parent_tags(run: RunSummary, meta: SessionMeta) -> dict[str, str]:
    from .. import __version__

    models = sorted({m for s in run.suites for m in s.models})
    tags = {
        "promptopt.session": "true",
        "promptopt.gates_passed": flag(run.gates_passed),
        "promptopt.exit_status": "" if meta.exit_status is None else str(meta.exit_status),
        "promptopt.complete": flag(meta.incomplete is None),
        # cases pytest's selection left out (-k, node ids, ...): never a branch baseline
        LEFT_OUT_TAG: left_out_tag(sum(meta.left_out.values()), meta.partial is not None),
        "promptopt.ci": flag(meta.ci),
        "promptopt.pytest_args": shlex.join(meta.pytest_args),
        "promptopt.models": ", ".join(models),
        "promptopt.plugin_version": __version__,
        "promptopt.rootdir": meta.rootdir,
        "mlflow.note.content": parent_note(run, meta.incomplete, meta.partial),
        **source_tags(meta),
    }
    if run.baseline is not None:  # --promptopt-baseline (mlflow/baseline.py)
        tags["promptopt.baseline"] = run.baseline.ref
        tags["promptopt.baseline_run_id"] = run.baseline.run_id or ""
    return clean_tags(tags)


def left_out_tag(count: int, partial: bool) -> str:
    """The `promptopt.left_out` value: how many cases the selection left out, `unknown` when it
    left some out without saying which (a node id naming a Python module, --lf skipping files)."""
    return str(count) if count or not partial else "unknown"


def parent_metrics(run: RunSummary) -> dict[str, float | None]:
    passed = sum(s.passed for s in run.suites)
    failed = sum(s.failed for s in run.suites)
    repairs: dict[str, float | None] = {}
    if run.repairs:  # --promptopt-repair
        repairs = {"repairs": len(run.repairs), "repaired": sum(1 for r in run.repairs if r.status == "repaired")}
    return display_metrics(
        {
            **repairs,
            "suites": len(run.suites),
            "cases": sum(s.cases for s in run.suites),
            "passed": passed,
            "failed": failed,
            "errors": sum(s.errors for s in run.suites),
            "pass_rate": passed / (passed + failed) if passed + failed else None,
            "gates_failed": len(run.failed_gates()),
        }
    )


def session_verdict(run: RunSummary, incomplete: str | None = None) -> str:
    """The session's verdict in words: the gates', or, for a session pytest did not finish
    (`incomplete`: why, `SessionMeta.incomplete`), that it is incomplete (the gates then judged
    only the cases that ran)."""
    if incomplete is not None:
        return f"INCOMPLETE ({incomplete}; only the cases that ran)"
    return "gates passed" if run.gates_passed else "GATES FAILED"


def gate_text(gate: Any) -> str:
    """A gate's outcome as its rule decided it (`pass_rate = 0.333 < 0.9`, or with the interval
    bound a strict or tolerant rule read), then ok or FAILED."""
    return f"{gate.reason}: {'ok' if gate.passed else 'FAILED'}"


def parent_note(run: RunSummary, incomplete: str | None = None, partial: str | None = None) -> str:
    """The parent run's description (Markdown, a few short lines, so the run's details stay on
    screen): the verdict and counts, the failed gates, regressions and repairs. The per-suite
    table is the `summary.md` artifact, every case the JSON report artifact."""
    passed, failed = sum(s.passed for s in run.suites), sum(s.failed for s in run.suites)
    errors, cases = sum(s.errors for s in run.suites), sum(s.cases for s in run.suites)
    verdict = session_verdict(run, incomplete)
    verdict = "**Gates passed**" if verdict == "gates passed" else f"**{verdict}**"
    lines = [
        f"{verdict}: {counted(len(run.suites), 'suite')}, {counted(cases, 'case')}, pass rate "
        f"{_percent(passed, passed + failed)} ({passed} passed, {failed} failed, {counted(errors, 'error')})"
    ]
    notes = [f"- {s.info.name}: {g.reason}" for s, g in run.failed_gates()]  # as its rule decided it
    notes += [f"- {c.name}: regression against the baseline" for c in run.regressions()]
    notes += [f"- repair of {r.suite_name} prompt {r.prompt_index}: {r.status}" for r in run.repairs]
    if len(notes) > NOTE_LINES:
        notes = [*notes[:NOTE_LINES], f"- ... {len(notes) - NOTE_LINES} more"]
    lines += ["", *notes] if notes else []
    if partial:
        lines += ["", f"Partial: {partial}"]
    lines += ["", f"Per-suite table: `{SUMMARY_FILE}`; every case: `{REPORT_FILE}` (artifacts)"]
    return "\n".join(lines)


def suite_summary_table(run: RunSummary, incomplete: str | None = None) -> str:
    """The `summary.md` artifact: one row per suite (pass rate, counts, each gate's value and verdict)."""
    rows = [
        "| suite | model | cases | passed | failed | errors | pass rate | gates |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in run.suites:
        gates = "; ".join(gate_text(g).replace(": FAILED", ": **FAILED**") for g in s.gates)
        rate = _rate(s.pass_rate)
        cells = [s.info.name, ", ".join(s.models), s.cases, s.passed, s.failed, s.errors, rate, gates or "none"]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    rows += [f"\n{c.name}: regression against the baseline: {_cell(c.regression_reason)}" for c in run.regressions()]
    verdict = session_verdict(run, incomplete)
    return scrub(f"# promptopt session: {verdict}\n\n" + "\n".join(rows) + "\n")


def _percent(part: int, whole: int) -> str:
    return f"{part / whole * 100:.1f}%" if whole else "n/a"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------- a suite's child run


def suite_tags(
    suite: SuiteSummary, parent: str, linked: Sequence[Mapping[str, str]], meta: SessionMeta
) -> dict[str, str]:
    rate = _rate(suite.pass_rate)
    gates = "; ".join(gate_text(g) for g in suite.gates)
    # A suite run of a session pytest did not finish holds only the cases that ran: it says so,
    # as its session does (the run lists show suite runs on their own).
    partial = f"INCOMPLETE ({meta.incomplete}): " if meta.incomplete else ""
    left_out = meta.left_out.get(suite.info.id, 0)
    narrowed = suite.info.id in meta.narrowed
    if left_out or narrowed:
        partial += f"PARTIAL ({counted(left_out, 'case') if left_out else 'some cases'} not selected): "
    tags = {
        "mlflow.parentRunId": parent,
        RUN_TYPE[0]: RUN_TYPE[1],
        "mlflow.note.content": f"{partial}pass rate {rate} ({suite.passed} passed, {suite.failed} failed, "
        f"{counted(suite.errors, 'error')})" + (f"; {gates}" if gates else ""),
        "promptopt.complete": flag(meta.incomplete is None),
        LEFT_OUT_TAG: left_out_tag(left_out, narrowed),
        "promptopt.suite": suite.info.name,
        "promptopt.suite_id": suite.info.id,  # the key a later baseline comparison matches on
        "promptopt.suite_file": suite.info.file,
        "promptopt.models": ", ".join(suite.models),
        "promptopt.gates_passed": flag(suite.gates_passed),
        **{f"promptopt.gate.{metric_key(g.name)}": "passed" if g.passed else "failed" for g in suite.gates},
        # what each gate compared, in words: MLflow 3.18's run page shows tags, not metrics or the description
        **({"promptopt.gates": gates} if gates else {}),
        **source_tags(meta),
    }
    if suite.cases_file is not None:  # a dataset suite: its rows are the `cases/` artifacts
        tags["promptopt.dataset"] = "true"
        tags["promptopt.cases_file"] = suite.cases_file
    if linked:  # MLflow's own link from a run to the prompt versions it used (the UI shows it)
        tags[LINKED_PROMPTS_TAG] = json.dumps(list(linked))
    return clean_tags(tags)


def suite_dataset(suite: SuiteSummary) -> dict[str, str]:
    """The suite's cases as an MLflow dataset input (the run lists' Dataset column): its name, a
    digest of its cases (the same cases give the same digest), where it comes from and its size."""
    cases = [[r.case_id, r.vars] for r in suite.results]
    if suite.dataset is not None:
        cases.append([suite.dataset.source, suite.cases])
    blob = json.dumps(cases, sort_keys=True, ensure_ascii=False, default=str)
    source = {"uri": suite.info.file}
    if suite.dataset is not None and suite.dataset.source:
        source["data"] = suite.dataset.source
    return {
        "name": suite.info.name,
        "digest": hashlib.sha256(blob.encode("utf-8")).hexdigest()[:10],
        "source_type": "local",
        "source": safe_text(json.dumps(source, ensure_ascii=False)),
        "profile": json.dumps({"num_rows": suite.cases}),
    }


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
    transforms: dict[str, list[str | None]] = {}  # per model name, each distinct transform once
    for result in suite.results:
        model_params.setdefault(result.model or "model", result.model_params)
        seen = transforms.setdefault(result.model or "model", [])
        if result.provider_transform not in seen:
            seen.append(result.provider_transform)
    for model, values in model_params.items():
        params[f"model_params.{metric_key(model)}"] = json.dumps(redact(values), sort_keys=True, default=str)
    for model, written in transforms.items():
        if written == [None]:
            continue
        # Two providers on one model (one name) may transform differently, or one not at all:
        # then the param lists each, null for none, rather than showing the first alone.
        value = written[0] if len(written) == 1 else json.dumps(written, ensure_ascii=False)
        params[f"provider_transform.{metric_key(model)}"] = value
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
        "gates_failed": sum(1 for g in suite.gates if not g.passed),  # a default column of Evaluation runs
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
    metrics.update({f"gate.{metric_key(g.name)}": g.compared for g in suite.gates})  # what each rule compared
    compared = run_baseline.suites.get(suite.info.id) if run_baseline is not None else None
    if compared is not None:
        metrics.update({"baseline_pass_rate": compared.baseline_pass_rate, "pass_rate_delta": compared.delta})
    return display_metrics(metrics)


def case_table(results: Sequence[Any], redacted: Sequence[Mapping[str, Any]] | None = None) -> dict[str, list[Any]]:
    """One row per case; the MLflow UI shows it (log_table). JSON columns stay strings so every
    cell is a scalar the UI can filter. `redacted`: the results' `redact(r.to_dict())`, when the
    report has them already."""
    if redacted is None:
        redacted = [redact(r.to_dict()) for r in results]
    rows = [{**row, "status": r.status} for r, row in zip(results, redacted)]
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
