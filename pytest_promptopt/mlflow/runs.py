"""MLflow runs of a session: one parent run per pytest session, one child run per suite, and one
per repair, then a read-back check that they arrived.

Each run goes out in a handful of calls (client.BatchedClient: create, one `log_batch`, one
`log_artifacts`, terminate), and the read-back compares counts and sizes rather than downloading
what was just sent. A SQLite store is checked and, when new, created from a migrated template
first (store.py).

Only the controller's writer (writer.py) logs, once, after every case ran and the gates were
decided (under xdist the records have already travelled to the controller), so there is one
writer per store: no SQLite write contention, no migration race on a fresh store. Nothing here
knows about pytest: it takes a `RunSummary` and the session's `SessionMeta`; what each run holds
is layout.py (a repair's: repair_layout.py), the Prompt Registry versions registry.py, the case
traces traces.py.

Every call goes through an explicit `MlflowClient` and run id, so no active run leaks into user
code (client.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..redact import redact, scrub
from ..run_json import report_dict
from ..summary import RunSummary, SuiteSummary
from .client import BatchedClient, experiment_id, log_batch, mlflow_calls, one_line, safe_uri, terminate_on_error
from .layout import (
    BASELINE_FILE,
    CASES_DIR,
    KIND_TAG,
    REPORT_FILE,
    SUMMARY_FILE,
    TABLE_FILE,
    TABLE_ROWS,
    SessionMeta,
    case_table,
    parent_metrics,
    parent_tags,
    rendered_prompts,
    run_name,
    suite_dataset,
    suite_metrics,
    suite_params,
    suite_summary_table,
    suite_tags,
    suite_times,
    templates,
)
from .registry import SuitePrompts, prompt_versions, register_proposal
from .repair_layout import DIFF_FILE, repair_metrics, repair_params, repair_tags
from .store import check_store, create_store, default_home, sqlite_file
from .traces import RepairRun, write_and_verify

__all__ = ["TRACES_AUTO_LIMIT", "Logged", "RenderedRun", "log_run", "render_run"]

# Case traces by default (auto) for runs of up to this many cases: a trace costs about 13 ms on an
# idle machine's SQLite store (docs/performance.md), so a larger run asks for them explicitly.
TRACES_AUTO_LIMIT = 500


@dataclass
class Logged:
    """Where a run went: the parent run id, one child run id per suite, and any check that failed.
    With --promptopt-repair: one child run per repair, and the Prompt Registry URI of each
    registered proposal (both by position in `run.repairs`)."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    child_run_ids: dict[str, str]
    problems: list[str] = field(default_factory=list)
    repair_run_ids: list[str] = field(default_factory=list)
    registered: dict[int, str] = field(default_factory=dict)
    traces_note: str = ""  # why the cases were not logged as traces (auto, in a large run)

    @property
    def url(self) -> str | None:
        if not self.tracking_uri.startswith(("http://", "https://")):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"

    def describe(self) -> str:
        where = f"MLflow: {self.tracking_uri}, experiment '{self.experiment}', run {self.parent_run_id}"
        return where + (f" ({self.url})" if self.url else "") + (f"; {self.traces_note}" if self.traces_note else "")


@dataclass(frozen=True)
class RenderedRun:
    """What `log_run` writes that follows from the summary alone and costs the most to make: the
    report file's text and the suites' case tables (by suite id; a dataset suite's table is read
    from its Parquet parts instead). The session renders it after its last case, while its
    writer process is still importing mlflow (writer.py); `log_run` renders it when not given."""

    report_text: str
    case_tables: dict[str, dict[str, list[Any]]]


def render_run(run: RunSummary, report: Mapping[str, Any]) -> RenderedRun:
    """`report` is `report_dict(run)`: its redacted results are the case tables' rows too."""
    tables = {
        suite.info.id: case_table(suite.results, data["results"])
        for suite, data in zip(run.suites, report["suites"])
        if suite.cases_file is None
    }
    return RenderedRun(json.dumps(report, indent=2, default=str), tables)


def log_run(
    run: RunSummary,
    meta: SessionMeta,
    tracking_uri: str,
    experiment: str,
    *,
    artifact_location: str | None = None,
    artifacts: Sequence[Path] = (),
    traces: bool | None = False,
    prompt_prefix: str = "",
    on_parent: Callable[[str], None] | None = None,
    rendered: RenderedRun | None = None,
) -> Logged:
    """Create the parent and child runs, log everything, then check it arrived. `traces` also
    writes one trace per case (traces.py): True always, None (auto) for runs of up to
    TRACES_AUTO_LIMIT cases. `on_parent` is told the parent run's id as soon as it exists
    (upload.py records it in the pending file). `rendered`: `render_run(run, ...)`, made ahead."""
    if rendered is None:
        rendered = render_run(run, report_dict(run, exit_status=meta.exit_status))
    cases = sum(len(s.results) for s in run.suites)
    note = ""
    if traces is None:
        traces = cases <= TRACES_AUTO_LIMIT
        if not traces:
            note = f"no case traces for {cases} cases (over {TRACES_AUTO_LIMIT}; --promptopt-mlflow-traces writes them)"
    with mlflow_calls(), BatchedClient(_client(tracking_uri)) as client:
        experiment_key = experiment_id(client, experiment, artifact_location)
        parent = client.create_run(
            experiment_key,
            start_time=meta.started_ms,
            tags=parent_tags(run, meta),
            run_name=run_name("pytest", meta, meta.started_ms),
        ).info.run_id
        if on_parent is not None:
            on_parent(parent)
        children: dict[str, str] = {}
        prompts: dict[str, SuitePrompts] = {}  # each suite's prompt versions, for its cases' traces
        repair_runs: list[RepairRun] = []
        registered: dict[int, str] = {}  # repairs' proposals in the Prompt Registry, by position
        registry_problems: list[str] = []  # prompts that could not be registered (the run is still logged)
        with terminate_on_error(client, parent):
            log_batch(client, parent, metrics=parent_metrics(run))
            client.log_text(parent, rendered.report_text, REPORT_FILE)
            client.log_text(parent, suite_summary_table(run, meta.incomplete), SUMMARY_FILE)
            for path in artifacts:
                client.log_artifact(parent, str(path))
            if run.baseline is not None:
                client.log_text(
                    parent, json.dumps(redact(run.baseline.to_dict()), indent=2, default=str), BASELINE_FILE
                )
            for suite in run.suites:
                children[suite.info.id], prompts[suite.info.id] = _log_suite(
                    client,
                    experiment_key,
                    parent,
                    suite,
                    meta,
                    registry_problems,
                    run.baseline,
                    prompt_prefix,
                    rendered.case_tables.get(suite.info.id),
                )
            for index, repair in enumerate(run.repairs):  # after the suites: a proposal is the newer version
                uri = register_proposal(client, run, repair, registry_problems, prompt_prefix, experiment_key)
                if uri is not None:
                    registered[index] = uri
                repair_runs.append((repair, _log_repair(client, experiment_key, parent, repair, meta, uri), uri))
            client.set_terminated(parent, "FINISHED", end_time=meta.ended_ms)
        try:
            problems = _verify(client, experiment_key, parent, run, children)
        except Exception as exc:  # the run is logged; a failed read-back must not make it pending
            cause = one_line(exc, on=f"experiment '{experiment}'")
            problems = [f"could not read the logged runs back: {cause}"]
        if traces:  # a trace that could not be written is a warning: the runs are logged
            problems += write_and_verify(
                client,
                experiment_key,
                run,
                children,
                started_ms=meta.started_ms,
                prompts=prompts,
                repairs=[r for r in repair_runs if r[0].cases],
                session=parent,
            )
    return Logged(
        safe_uri(tracking_uri),
        experiment,
        experiment_key,
        parent,
        children,
        registry_problems + problems,
        [run_id for _, run_id, _ in repair_runs],
        registered,
        note,
    )


def _client(tracking_uri: str) -> Any:
    """An `MlflowClient`; a SQLite store is checked first (fails in milliseconds where MLflow
    would retry for ~100 s) and, when missing, created from the migrated template (store.py)."""
    from mlflow import MlflowClient

    database = sqlite_file(tracking_uri)
    if database is not None:
        check_store(database)
        create_store(database, default_home())
    return MlflowClient(tracking_uri=tracking_uri)


def _log_suite(
    client: Any,
    experiment_key: str,
    parent: str,
    suite: SuiteSummary,
    meta: SessionMeta,
    problems: list[str],
    baseline: Any = None,
    prompt_prefix: str = "",
    table: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[str, SuitePrompts]:
    """A suite's run, from its first case's start to its last case's end, with its prompt
    versions registered and linked, its cases as the run's dataset input and `table` (its case
    table from `render_run`; None for a dataset suite, whose table is read from its parts); its
    id and versions."""
    versions = prompt_versions(client, suite, problems, prompt_prefix, experiment_key)
    start, end = suite_times(suite, meta)
    child = client.create_run(
        experiment_key,
        start_time=start,
        tags=suite_tags(suite, parent, versions.linked, meta),
        run_name=run_name(suite.info.name, meta, start),
    ).info.run_id
    with terminate_on_error(client, child):
        found = templates(suite)
        log_batch(client, child, metrics=suite_metrics(suite, baseline), params=suite_params(suite, found))
        _log_dataset_input(client, child, suite)
        if table is not None:
            client.log_table(child, table, TABLE_FILE)
        else:
            _log_dataset_cases(client, child, suite, problems)
        text = meta.suite_files.get(suite.info.file)
        if text is not None:
            client.log_text(child, text, f"suite/{_suite_copy_name(suite.info.file)}")
        for index, template in found.items():
            client.log_text(child, scrub(template), f"prompts/template-{index}.txt")
        client.log_text(child, rendered_prompts(suite), "prompts/rendered.md")
        client.set_terminated(child, "FINISHED", end_time=end)
    return child, versions


def _log_dataset_input(client: Any, run_id: str, suite: SuiteSummary) -> None:
    """The suite's cases as the run's dataset input (context `eval`), as `mlflow.genai.evaluate`
    logs its data: the run lists show it in their Dataset column."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    described = suite_dataset(suite)
    dataset = Dataset(schema=None, **described)
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "eval")])])


def _log_dataset_cases(client: Any, run_id: str, suite: SuiteSummary, problems: list[str]) -> None:
    """A dataset suite's per-case Parquet parts as artifacts under `cases/`, and, when it has at
    most TABLE_ROWS rows, the `cases.json` table too (read back from the parts)."""
    folder = Path(suite.cases_file or "")
    if not folder.is_dir():
        problems.append(f"suite '{suite.info.name}': its per-case table {folder} is gone; only its stats were logged")
        return
    client.log_artifacts(run_id, str(folder), CASES_DIR)
    if suite.cases <= TABLE_ROWS:
        from ..case_table import iter_results

        client.log_table(run_id, case_table(list(iter_results(folder))), TABLE_FILE)


def _log_repair(
    client: Any, experiment_key: str, parent: str, repair: Any, meta: SessionMeta, registry_uri: str | None
) -> str:
    """One repair as a child run: what was repaired and how (params), the pass rates before and
    after and the calls (metrics), the proposal, the original and the diff (artifacts). Its
    scored cases become its traces (traces.py)."""
    start = int(repair.started_at * 1000) if repair.started_at else meta.started_ms
    child = client.create_run(
        experiment_key,
        start_time=start,
        tags=repair_tags(repair, parent, registry_uri, meta),
        run_name=run_name(f"repair {repair.suite_name} prompt {repair.prompt_index}", meta, start),
    ).info.run_id
    with terminate_on_error(client, child):
        log_batch(client, child, metrics=repair_metrics(repair), params=repair_params(repair))
        data = redact(repair.to_dict())
        client.log_text(child, json.dumps(data, indent=2, ensure_ascii=False, default=str), "repair/result.json")
        client.log_text(child, scrub(repair.original), "repair/original.txt")
        if repair.prompt is not None:
            suffix = Path(repair.file).suffix if repair.file else ".txt"
            client.log_text(child, scrub(repair.prompt), f"repair/proposal{suffix or '.txt'}")
        if repair.diff:
            client.log_text(child, scrub(repair.diff), DIFF_FILE)
        end = start + int(repair.duration_s * 1000) if repair.started_at else meta.ended_ms
        client.set_terminated(child, "FINISHED", end_time=end)
    return child


def _verify(
    client: BatchedClient, experiment_key: str, parent: str, run: RunSummary, children: Mapping[str, str]
) -> list[str]:
    """Read back what was logged, by counts and sizes rather than by downloading it: one child
    run per suite and one per repair, each case table in the store with the size it was sent
    with, and one table row per case as written. (Reading the table back through
    `MlflowClient.load_table` would search runs through the global tracking URI in MLflow 3.17,
    not the client's.)"""
    problems = []
    found = client.search_runs(
        [experiment_key], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000
    )
    repairs = [r for r in found if r.data.tags.get(KIND_TAG) == "repair"]
    suites = len(found) - len(repairs)
    if suites != len(run.suites):
        problems.append(f"{suites} child runs found for {len(run.suites)} suites")
    if len(repairs) != len(run.repairs):
        problems.append(f"{len(repairs)} repair runs found for {len(run.repairs)} repairs")
    for suite in run.suites:
        run_id = children[suite.info.id]
        if suite.cases_file is not None:  # a dataset suite: its Parquet parts, and a table when small
            if Path(suite.cases_file).is_dir() and not client.list_artifacts(run_id, CASES_DIR):
                problems.append(f"suite '{suite.info.name}': no per-case table under '{CASES_DIR}/'")
            if suite.cases > TABLE_ROWS or not Path(suite.cases_file).is_dir():
                continue
        rows = client.rows.get(run_id, {}).get(TABLE_FILE)
        if rows != suite.cases:
            problems.append(f"suite '{suite.info.name}': the case table has {rows} rows for {suite.cases} cases")
        size = {a.path: a.file_size for a in client.list_artifacts(run_id)}.get(TABLE_FILE)
        sent = client.sent.get(run_id, {}).get(TABLE_FILE)
        if size != sent:
            problems.append(
                f"suite '{suite.info.name}': the case table in the store has {size} bytes, {sent} were sent"
            )
    return problems


def _suite_copy_name(file: str) -> str:
    """The artifact name of a suite's source. A Python test module gets `.txt` added: the local
    store's artifacts are under the project (`mlruns/`), where a `test_*.py` copy would be
    collected by a pytest run without this plugin (`-p no:promptopt`), as a clashing module or
    the same tests twice."""
    name = Path(file).name
    return f"{name}.txt" if name.endswith(".py") else name
