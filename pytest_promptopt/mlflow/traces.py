"""Cases as MLflow traces (`--promptopt-mlflow-traces`), for MLflow's Traces/Evaluations view.

The controller calls `log_case_traces` once, after the session and suite runs exist: every case
becomes one finished trace in the session's experiment, linked to its suite's child run (trace
metadata `mlflow.sourceRun`, as `mlflow.genai.evaluate` links its traces), tagged the way MLflow's
own pytest plugin tags traces (`mlflow.test.name` = the pytest node id, `mlflow.test.case_id` =
the parametrize id), with one Feedback assessment per assertion and an overall `passed` one.

The traces are built as finished entities and written through the client's tracing store, not
through MLflow's tracer (no global tracer provider, no background export queue, no active run or
experiment): each trace's info, tags, metadata and assessments go in one `start_trace` call,
then the spans of a chunk of cases in one `log_spans` call. These are the store calls MLflow's own
exporter makes per trace, made serially, so a SQLite store sees one writer and no pool contention.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..records import CaseResult
from ..redact import redact, scrub
from ..summary import RunSummary, SuiteSummary

__all__ = ["CHUNK", "TEST_CASE_ID", "TEST_NAME", "count_run_traces", "log_case_traces", "write_and_verify"]

# mlflow.pytest.session.TAG_TEST_NAME / TAG_CASE_ID (MLflow's experimental pytest plugin)
TEST_NAME = "mlflow.test.name"
TEST_CASE_ID = "mlflow.test.case_id"
SOURCE_RUN = "mlflow.sourceRun"  # mlflow.tracing.constant.TraceMetadataKey.SOURCE_RUN
ASSESSMENT_SOURCE_RUN = "mlflow.assessment.sourceRunId"  # AssessmentMetadataKey.SOURCE_RUN_ID
SOURCE_ID = "pytest-promptopt"
CHUNK = 100  # cases per log_spans call
_PREVIEW = 1000
_MAX_TAG = 8000


def log_case_traces(
    client: Any, experiment_id: str, run: RunSummary, children: Mapping[str, str], *, started_ms: int
) -> list[str]:
    """Write one trace per case of every suite; return problems (never raises for one case)."""
    problems: list[str] = []
    for suite in run.suites:
        run_id = children.get(suite.info.id)
        if run_id is None:
            continue
        built = [_build(result, suite, run_id, experiment_id, started_ms) for result in suite.results]
        errors: list[str] = []
        for start in range(0, len(built), CHUNK):
            errors += _write(client, experiment_id, built[start : start + CHUNK])
        if errors:
            problems.append(
                f"suite '{suite.info.name}': {len(errors)} of {len(built)} case traces could not be written: {errors[0]}"
            )
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


# --------------------------------------------------------------------------- building


def _build(
    result: CaseResult, suite: SuiteSummary, run_id: str, experiment_id: str, started_ms: int
) -> tuple[Any, Any]:
    """A finished root span and the TraceInfo (with assessments) of one case."""
    from mlflow.entities import Feedback, Span, TraceInfo, TraceLocation, TraceState
    from mlflow.entities.assessment_source import AssessmentSource, AssessmentSourceType
    from mlflow.tracing.constant import TRACE_SCHEMA_VERSION, TRACE_SCHEMA_VERSION_KEY, SpanAttributeKey, TraceTagKey
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    otel_trace_id = random.getrandbits(128) or 1
    trace_id = f"tr-{otel_trace_id:032x}"
    duration_ms = result.latency_ms if result.latency_ms is not None else result.duration_s * 1000
    start_ns = started_ms * 1_000_000
    end_ns = start_ns + max(0, int(duration_ms * 1_000_000))
    inputs = redact({"prompt": result.prompt, "vars": dict(result.vars)})
    outputs = redact({"error": result.error} if result.error else {"output": result.output})
    details = _details(result)

    attributes: dict[str, str] = {
        SpanAttributeKey.REQUEST_ID: json.dumps(trace_id),
        SpanAttributeKey.SPAN_TYPE: json.dumps("LLM"),
        SpanAttributeKey.INPUTS: _dumps(inputs),
        SpanAttributeKey.OUTPUTS: _dumps(outputs),
        **{f"promptopt.{k}": _dumps(v) for k, v in details.items()},
    }
    tokens = result.prompt_tokens is not None or result.completion_tokens is not None
    if tokens:
        usage = {"input_tokens": result.prompt_tokens or 0, "output_tokens": result.completion_tokens or 0}
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        attributes[SpanAttributeKey.CHAT_USAGE] = json.dumps(usage)
    if result.cost is not None:
        attributes[SpanAttributeKey.LLM_COST] = json.dumps({"total_cost": result.cost})
    # With tokens, a model and no cost, MLflow's store would price the call itself (through
    # litellm's online price list); the model stays in `promptopt.model` then.
    if result.model and (result.cost is not None or not tokens):
        attributes[SpanAttributeKey.MODEL] = json.dumps(scrub(result.model))
    events = []
    if result.error:
        status = Status(StatusCode.ERROR, scrub(result.error)[:_PREVIEW])
        events.append(
            Event(
                "exception",
                {"exception.type": "ModelError", "exception.message": scrub(result.error)},
                timestamp=end_ns,
            )
        )
    else:
        status = Status(StatusCode.OK)
    context = SpanContext(
        otel_trace_id, random.getrandbits(64) or 1, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    span = Span(
        ReadableSpan(
            name=_span_name(result),
            context=context,
            parent=None,
            attributes=attributes,
            events=events,
            start_time=start_ns,
            end_time=end_ns,
            status=status,
        )
    )

    source = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=SOURCE_ID)
    feedback_meta = {ASSESSMENT_SOURCE_RUN: run_id}
    assessments = [
        Feedback(
            name="passed",
            value=result.passed if not result.error else None,
            error=scrub(result.error) if result.error else None,
            rationale=scrub(result.reason or ""),
            source=source,
            trace_id=trace_id,
            metadata=feedback_meta,
        )
    ]
    seen: dict[str, int] = {}
    for check in result.assertions:
        name = str(check.get("metric") or check.get("type") or "assertion")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} #{seen[name]}"
        score = check.get("score")
        value = (
            float(score)
            if isinstance(score, (int, float)) and not isinstance(score, bool)
            else bool(check.get("passed"))
        )
        meta = {
            **feedback_meta,
            "promptopt.passed": str(bool(check.get("passed"))).lower(),
            "promptopt.type": str(check.get("type")),
        }
        if check.get("value") is not None:
            meta["promptopt.value"] = _dumps(redact(check.get("value")))[:_PREVIEW]
        assessments.append(
            Feedback(
                name=name,
                value=value,
                rationale=scrub(str(check.get("reason") or "")) or None,
                source=source,
                trace_id=trace_id,
                metadata=meta,
            )
        )

    tags = {
        TraceTagKey.TRACE_NAME: _span_name(result),
        "promptopt.suite": suite.info.name,
        "promptopt.case_id": result.case_id,
        "promptopt.status": result.status,
    }
    if result.nodeid:
        tags[TEST_NAME] = result.nodeid
        case = _param_id(result.nodeid)
        if case:
            tags[TEST_CASE_ID] = case
    metadata = {
        TRACE_SCHEMA_VERSION_KEY: str(TRACE_SCHEMA_VERSION),
        SOURCE_RUN: run_id,
        **{f"promptopt.{k}": "" if v is None else str(v) for k, v in details.items()},
    }
    info = TraceInfo(
        trace_id=trace_id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=started_ms,
        state=TraceState.ERROR if result.error else TraceState.OK,
        request_preview=_dumps(inputs)[:_PREVIEW],
        response_preview=_dumps(outputs)[:_PREVIEW],
        execution_duration=int(duration_ms),
        trace_metadata={k: scrub(v)[:_MAX_TAG] for k, v in metadata.items()},
        tags={k: scrub(str(v))[:_MAX_TAG] for k, v in tags.items()},
        assessments=assessments,
    )
    return span, info


def _details(result: CaseResult) -> dict[str, Any]:
    return {
        "model": scrub(result.model),
        "latency_ms": result.latency_ms,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost": result.cost,
        "calls": result.calls,
        "cache_hit": result.calls > 0 and result.cache_hits >= result.calls,
        "cache_hits": result.cache_hits,
        "score": result.score,
        "status": result.status,
    }


def _span_name(result: CaseResult) -> str:
    return result.name or result.case_id


def _param_id(nodeid: str) -> str | None:
    """The parametrize id of a node id (`test_x[a-b]` -> `a-b`), like MLflow's `callspec.id`."""
    match = re.search(r"\[(.*)\]$", nodeid.rsplit("::", 1)[-1])
    return match.group(1) if match else None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- writing


def _write(client: Any, experiment_id: str, built: Sequence[tuple[Any, Any]]) -> list[str]:
    """Write a chunk of traces: each trace's record (info, tags, metadata, assessments), then the
    spans of the whole chunk in one call; a store that does not take spans gets them in the
    artifact store, as MLflow's exporter does. Returns one message per trace that failed."""
    from mlflow.entities import TraceData
    from mlflow.tracing.constant import SpansLocation, TraceTagKey

    tracing = client._tracing_client  # the TracingClient of this MlflowClient (same store)
    errors: list[str] = []
    written: list[tuple[Any, Any]] = []
    for span, info in built:
        try:
            written.append((span, tracing.start_trace(info)))
        except Exception as exc:
            errors.append(_message(exc))
    if not written:
        return errors
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
    return errors


def _message(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")


def write_and_verify(
    client: Any, experiment_id: str, run: RunSummary, children: Mapping[str, str], *, started_ms: int
) -> list[str]:
    """`log_case_traces`, then read back: each suite run must link one trace per case. Problems
    are returned as warnings; the runs are logged whatever happens here."""
    try:
        problems = log_case_traces(client, experiment_id, run, children, started_ms=started_ms)
    except Exception as exc:
        return [f"case traces were not written: {_message(exc)}"]
    try:
        for suite in run.suites:
            run_id = children.get(suite.info.id)
            found = count_run_traces(client, experiment_id, run_id) if run_id else 0
            if found != len(suite.results):
                problems.append(f"suite '{suite.info.name}': {found} traces found for {len(suite.results)} cases")
    except Exception as exc:
        problems.append(f"could not read the case traces back: {_message(exc)}")
    return problems
