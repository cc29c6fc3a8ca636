"""Loading a baseline from MLflow: a session (parent) run, its per-suite child runs and their
per-case tables (`cases.json`, as runs.py logs them), as a `baseline.BaselineRun`.

`mlflow:<run_id>` names the session run (one narrowed by -k or node ids is used as asked, and
the comparison says that the cases it did not run show as added); `mlflow:branch=<name>` is the
latest FINISHED session run of the experiment whose `mlflow.source.git.branch` tag is that branch
and whose session ran to its end (`promptopt.exit_status` 0 or 1: an interrupted one holds only
some cases) with every case it collected (`promptopt.left_out` 0: not narrowed by -k or node
ids). The table is downloaded with the client and parsed (`MlflowClient.load_table` reads through
the global tracking URI in MLflow 3.17, not the client's). Nothing here knows about pytest.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from ..baseline import BaselineComparison, BaselineRef, BaselineRun, BaselineSuite, CaseOutcome, compare_run
from .client import MlflowReportError, mlflow_calls, one_line, safe_uri
from .layout import LEFT_OUT_TAG, TABLE_FILE

__all__ = ["BaselineError", "compare_with_baseline", "load_baseline"]

SESSION_TAG = "promptopt.session"
SUITE_ID_TAG = "promptopt.suite_id"
BRANCH_TAG = "mlflow.source.git.branch"


class BaselineError(RuntimeError):
    """The baseline could not be found or read; the message says which and why."""


def load_baseline(ref: BaselineRef, tracking_uri: str, experiment: str) -> BaselineRun:
    try:
        with mlflow_calls():
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=tracking_uri)
            parent = _session_run(client, ref, tracking_uri, experiment)
            return _load(client, ref, parent)
    except (BaselineError, MlflowReportError):
        raise
    except Exception as exc:  # a store that is down, a missing artifact
        cause = one_line(exc, on=f"experiment '{experiment}'")
        raise BaselineError(
            f"baseline {ref.describe()} could not be read from {safe_uri(tracking_uri)}: {cause}"
        ) from None


def _session_run(client: Any, ref: BaselineRef, tracking_uri: str, experiment: str) -> Any:
    from mlflow.exceptions import MlflowException

    where = safe_uri(tracking_uri)
    if ref.run_id is not None:
        try:
            run = client.get_run(ref.run_id)
        except MlflowException:
            raise BaselineError(f"baseline {ref.describe()}: no such run in {where}") from None
        tags = run.data.tags
        if tags.get(SESSION_TAG) != "true":
            parent = tags.get("mlflow.parentRunId")
            hint = f" (it is a suite run; its session run is {parent})" if parent else ""
            raise BaselineError(f"baseline {ref.describe()}: run {ref.run_id} is not a promptopt session run{hint}")
        if run.info.status != "FINISHED":
            raise BaselineError(
                f"baseline {ref.describe()}: run {ref.run_id} is {run.info.status}, not a finished session run"
            )
        if not _complete(run):
            raise BaselineError(
                f"baseline {ref.describe()}: run {ref.run_id} is a session pytest did not finish (exit status "
                f"{tags.get(EXIT_TAG)}, complete: {tags.get('promptopt.complete', '?')}): it holds only the cases "
                "that ran; name a complete session run"
            )
        return run
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise BaselineError(f"baseline {ref.describe()}: no experiment '{experiment}' in {where}")
    branch = (ref.branch or "").replace("'", "\\'")
    # Newest first, page by page: the first whole session is the baseline. An interrupted one, or
    # one that ran only the cases pytest selected, never is (a branch may hold many -k runs).
    skipped, token = 0, None
    for _ in range(_MAX_PAGES):
        page = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`{SESSION_TAG}` = 'true' AND tags.`{BRANCH_TAG}` = '{branch}' AND attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=_PAGE,
            page_token=token,
        )
        for run in page:
            if _complete(run) and run.data.tags.get(LEFT_OUT_TAG, "0") in ("", "0"):
                return run
            skipped += 1
        token = page.token
        if not token:
            break
    found_partial = f" ({skipped} found that did not run every case: interrupted, or -k / node ids)" if skipped else ""
    raise BaselineError(
        f"baseline {ref.describe()}: no finished session run on branch '{ref.branch}' in experiment "
        f"'{experiment}' ({where}){found_partial}"
    )


EXIT_TAG = "promptopt.exit_status"
_PAGE, _MAX_PAGES = 100, 20  # sessions of a branch read, newest first, to find a whole one


def _complete(run: Any) -> bool:
    """A session run pytest finished (`promptopt.complete`; an older run without it: exit status
    0 or 1, or none recorded)."""
    tags = run.data.tags
    return tags.get("promptopt.complete", "true") == "true" and tags.get(EXIT_TAG, "") in ("", "0", "1")


def _load(client: Any, ref: BaselineRef, parent: Any) -> BaselineRun:
    run_id = parent.info.run_id
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1000
    )
    suites: dict[str, BaselineSuite] = {}
    with tempfile.TemporaryDirectory(prefix="promptopt-baseline-") as tmp:
        for child in children:
            tags = child.data.tags
            name = tags.get("promptopt.suite")
            if name is None or tags.get("promptopt.dataset") == "true":
                # not a suite run (e.g. a trace or something a user added), or a dataset
                # suite, whose cases are a Parquet table, not compared case by case
                continue
            # Runs logged before the suite id tag: a suite file's id is its file, a Python suite's its name.
            suite_id = tags.get(SUITE_ID_TAG) or (
                tags.get("promptopt.suite_file") if child.data.params.get("suite_kind") == "file" else name
            )
            local = client.download_artifacts(child.info.run_id, TABLE_FILE, str(Path(tmp) / child.info.run_id))
            suites[suite_id] = BaselineSuite(
                suite_id, name, _cases(json.loads(Path(local).read_text(encoding="utf-8"))), child.info.run_id
            )
    return BaselineRun(ref.describe(), run_id, suites, parent.data.tags.get(LEFT_OUT_TAG) or "0")


def _cases(table: dict[str, Any]) -> list[CaseOutcome]:
    columns = table.get("columns", [])
    cases = []
    for values in table.get("data", []):
        row = dict(zip(columns, values))
        named = row.get("named_scores")
        if isinstance(named, str):
            named = json.loads(named or "{}")
        status = row.get("status") or ("error" if row.get("error") else ("passed" if row.get("passed") else "failed"))
        repeats = int(row.get("repeats") or 1)  # tables logged before repeats have no such column
        cases.append(
            CaseOutcome(
                str(row["case_id"]),
                str(row.get("name") or ""),
                status,
                row.get("output"),
                named or {},
                repeats,
                int(row.get("repeat_passed") or 0) if repeats > 1 else None,
            )
        )
    return cases


def compare_with_baseline(
    run: Any,
    ref: BaselineRef,
    tracking_uri: str,
    experiment: str,
    regression: Any = None,
    not_selected: Mapping[str, Collection[str]] | None = None,
    narrowed: Collection[str] = (),
) -> Any:
    """`run`'s `BaselineComparison` with the baseline `ref`; never raises: a baseline that cannot
    be loaded gives a comparison whose `error` says why (the run's results stand as they are)."""
    try:
        baseline = load_baseline(ref, tracking_uri, experiment)
    except (BaselineError, MlflowReportError) as exc:
        return BaselineComparison.failed(ref.describe(), str(exc))
    return compare_run(run.suite_outcomes(), baseline, regression, not_selected, narrowed)
