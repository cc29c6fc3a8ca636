"""Cases as MLflow traces, for MLflow's Traces and Evaluation runs views.

The controller calls `write_and_verify` once, after the session, suite and repair runs exist:
every case becomes one finished trace in the session's experiment (built by trace_build.py),
linked to its suite's run (trace metadata `mlflow.sourceRun`, as `mlflow.genai.evaluate` links its
traces) and to the session's run (a run link, so the session's row of the Evaluation runs list
opens to all its cases, not to "No traces found"), and tagged the way MLflow's own pytest plugin
tags traces (`mlflow.test.name` = the pytest node id, `mlflow.test.case_id` = the parametrize
id); each repair's scored cases become traces of its run.

The traces are written as finished entities through the client's tracing store, not through
MLflow's tracer (no global tracer provider, no background export queue, no active run or
experiment): each trace's info, tags, metadata and assessments go in one `start_trace` call,
then the spans of a chunk of cases in one `log_spans` call. These are the store calls MLflow's own
exporter makes per trace, made serially, so a SQLite store sees one writer and no pool contention.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..records import CaseResult
from ..redact import scrub
from ..summary import RunSummary
from .prompts import RegistryError, parse_uri
from .registry import SuitePrompts
from .trace_build import build_case_trace, build_repair_trace, case_inputs

__all__ = ["CHUNK", "RepairRun", "count_run_traces", "log_case_traces", "write_and_verify"]

CHUNK = 100  # cases per log_spans call

RepairRun = tuple[Any, str, str | None]  # a RepairResult, its run id, its registered proposal's URI


def log_case_traces(
    client: Any,
    experiment_id: str,
    run: RunSummary,
    children: Mapping[str, str],
    *,
    started_ms: int,
    prompts: Mapping[str, SuitePrompts] | None = None,
    repairs: Sequence[RepairRun] = (),
    session: str | None = None,
) -> list[str]:
    """Write one trace per case of every suite (and per scored case of every repair); return
    problems (never raises for one case). `prompts`: each suite's prompt versions, by suite id;
    `session`: the session's run, which the suites' case traces are linked to as well."""
    problems: list[str] = []
    previews: dict[str, dict[str, dict[str, Any]]] = {}  # suite id -> case id -> trace inputs
    for suite in run.suites:
        run_id = children.get(suite.info.id)
        inputs = case_inputs(suite.results)
        previews[suite.info.id] = {r.case_id: i for r, i in zip(suite.results, inputs)}
        if run_id is None:
            continue
        versions = (prompts or {}).get(suite.info.id) or SuitePrompts()
        built = [
            build_case_trace(
                result,
                suite=suite.info.name,
                run_id=run_id,
                experiment_id=experiment_id,
                inputs=case_input,
                linked=_links(result, versions, suite.info.kind),
                default_ms=started_ms,
            )
            for result, case_input in zip(suite.results, inputs)
        ]
        problems += _write_all(client, experiment_id, built, f"suite '{suite.info.name}'", session)
    for repair, run_id, registry_uri in repairs:
        built = []
        known = previews.get(repair.suite, {})
        linked = _uri_links([registry_uri] if registry_uri else [])
        for case in repair.cases:
            built.append(
                build_repair_trace(
                    case,
                    suite=repair.suite_name,
                    run_id=run_id,
                    experiment_id=experiment_id,
                    inputs=known.get(case.get("case_id")) or dict(case.get("vars") or {}),
                    linked=linked,
                    default_ms=int(repair.started_at * 1000) if repair.started_at else started_ms,
                )
            )
        problems += _write_all(client, experiment_id, built, f"repair of '{repair.suite_name}'")
    return problems


def _links(result: CaseResult, versions: SuitePrompts, kind: str) -> list[dict[str, str]]:
    """The prompt versions a case ran: its registry prompts, else its suite prompt's version."""
    found = _uri_links(result.registry_prompts)
    if not found and kind == "file" and (result.prompt_index or 0) in versions.by_index:
        found = [versions.by_index[result.prompt_index or 0]]
    return found


def _uri_links(uris: Sequence[str]) -> list[dict[str, str]]:
    found = []
    for uri in uris:
        with contextlib.suppress(RegistryError):
            name, version, _ = parse_uri(uri)
            if version is not None:
                found.append({"name": name, "version": str(version)})
    return found


def _write_all(
    client: Any, experiment_id: str, built: Sequence[tuple[Any, Any]], what: str, session: str | None = None
) -> list[str]:
    errors: list[str] = []
    unlinked: list[str] = []
    for start in range(0, len(built), CHUNK):
        written, failed = _write(client, experiment_id, built[start : start + CHUNK])
        errors += failed
        if session and written:
            try:  # at most 100 traces per call (MLflow's limit), as CHUNK
                client.link_traces_to_run(written, session)
            except Exception as exc:
                unlinked.append(_message(exc))
    problems = (
        [f"{what}: {len(errors)} of {len(built)} case traces could not be written: {errors[0]}"] if errors else []
    )
    if unlinked:
        problems.append(f"{what}: its case traces could not be linked to the session's run: {unlinked[0]}")
    return problems


def count_run_traces(client: Any, experiment_id: str, run_id: str) -> int:
    """How many traces the store links to `run_id` (metadata `mlflow.sourceRun` or a run link)."""
    count, token = 0, None
    while True:
        page = client.search_traces(
            locations=[experiment_id], run_id=run_id, include_spans=False, max_results=500, page_token=token
        )
        count += len(page)
        token = page.token
        if not token:
            return count


# --------------------------------------------------------------------------- writing


def _write(client: Any, experiment_id: str, built: Sequence[tuple[Any, Any]]) -> tuple[list[str], list[str]]:
    """Write a chunk of traces: each trace's record (info, tags, metadata, assessments), then the
    spans of the whole chunk in one call; a store that does not take spans gets them in the
    artifact store, as MLflow's exporter does. Returns the ids of the traces written, and one
    message per trace that failed."""
    from mlflow.entities import TraceData
    from mlflow.tracing.constant import SpansLocation, TraceTagKey

    tracing = client._tracing_client  # the TracingClient of this MlflowClient (same store)
    errors: list[str] = []
    written: list[tuple[Any, Any]] = []
    links = True
    for span, info in built:
        try:
            written.append((span, tracing.start_trace(info)))
        except Exception as exc:
            errors.append(_message(exc))
            continue
        links = links and _link_prompts(tracing.store, info)
    if not written:
        return [], errors
    try:
        tracing.log_spans(experiment_id, [span for span, _ in written])
        in_store = True
    except Exception:  # NotImplementedError, or a server without span ingestion
        in_store = False
    for span, returned in written:
        if in_store and returned.tags.get(TraceTagKey.SPANS_LOCATION) in (None, SpansLocation.TRACKING_STORE.value):
            continue
        try:
            tracing._upload_trace_data(returned, TraceData(spans=[span]))
        except Exception as exc:
            errors.append(_message(exc))
    return [returned.trace_id for _, returned in written], errors


def _link_prompts(store: Any, info: Any) -> bool:
    """Link a trace to the prompt versions it ran in the store, as MLflow's own tracing does: a
    prompt version's Traces tab searches those links (`prompt = "name/version"`), not the trace's
    `mlflow.linkedPrompts` tag (which the trace's page reads, and which stays). False when the
    store cannot (a server without the endpoint): the chunk's other traces keep the tag alone."""
    from mlflow.entities.model_registry import PromptVersion
    from mlflow.tracing.constant import TraceTagKey

    linked = json.loads(info.tags.get(TraceTagKey.LINKED_PROMPTS) or "[]")
    if not linked:
        return True
    try:
        store.link_prompts_to_trace(
            info.trace_id, [PromptVersion(name=v["name"], version=int(v["version"]), template="") for v in linked]
        )
    except Exception:  # the link is what the prompt's page lists; the trace itself is written
        return False
    return True


def _message(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def write_and_verify(
    client: Any,
    experiment_id: str,
    run: RunSummary,
    children: Mapping[str, str],
    *,
    started_ms: int,
    prompts: Mapping[str, SuitePrompts] | None = None,
    repairs: Sequence[RepairRun] = (),
    session: str | None = None,
) -> list[str]:
    """`log_case_traces`, then read back: each suite run must link one trace per case, each
    repair run one per scored case, the session's run one per case of its suites. Problems are
    returned as warnings; the runs are logged whatever happens here."""
    try:
        problems = log_case_traces(
            client,
            experiment_id,
            run,
            children,
            started_ms=started_ms,
            prompts=prompts,
            repairs=repairs,
            session=session,
        )
    except Exception as exc:
        return [f"case traces were not written: {_message(exc)}"]
    expected = [(f"suite '{s.info.name}'", children.get(s.info.id), len(s.results)) for s in run.suites]
    if session:  # as for a suite run, a link that failed is named, then seen in the count
        cases = sum(len(s.results) for s in run.suites if children.get(s.info.id))
        expected.append(("the session's run", session, cases))
    expected += [(f"repair of '{r.suite_name}'", run_id, len(r.cases)) for r, run_id, _ in repairs]
    try:
        for what, run_id, cases in expected:
            found = count_run_traces(client, experiment_id, run_id) if run_id else 0
            if found != cases:
                problems.append(f"{what}: {found} traces found for {cases} cases")
    except Exception as exc:
        problems.append(f"could not read the case traces back: {_message(exc)}")
    return problems
