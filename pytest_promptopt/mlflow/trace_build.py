"""A case as an MLflow trace, shaped the way MLflow 3.17's evaluation views read the traces of
`mlflow.genai.evaluate` (mlflow/genai/evaluation/harness.py, utils/trace_utils.py), without calling
it: built here as finished entities, written by traces.py.

- inputs = the case's vars: the trace's `request_preview` is the JSON of that dict, identical for
  the same case in every run and unique within a run, because MLflow's "compare to another run"
  pairs two runs' traces by that exact string (`case_inputs`);
- output = the plain answer (`"cold"`, not `{"output": "cold"}`); the rendered prompt (or its
  chat messages) is a span attribute;
- one Expectation per check with an expected value, one Feedback per check and one for the case's
  verdict, all named `<suite>/<check>`: the experiment's Quality overview averages assessments by
  name across the whole experiment, so a suite's names are its own;
- rationales are escaped for the Markdown the UI renders them with (`markdown_text`);
- `mlflow.linkedPrompts`: the prompt version the case ran (the trace's "linked prompt").

A repair's case (`--promptopt-repair`) becomes a trace of the proposal's answer with the
original's beside it (`build_repair_trace`), under the same inputs as the suite's trace of that
case, so "compare to" pairs the repair run with the suite run case by case.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.base import Request
from ..records import CaseResult
from ..redact import redact, scrub

__all__ = [
    "ASSESSMENT_SOURCE_RUN",
    "SOURCE_ID",
    "SOURCE_RUN",
    "TEST_CASE_ID",
    "TEST_NAME",
    "build_case_trace",
    "build_repair_trace",
    "case_inputs",
    "check_labels",
    "markdown_text",
]

# mlflow.pytest.session.TAG_TEST_NAME / TAG_CASE_ID (MLflow's experimental pytest plugin)
TEST_NAME = "mlflow.test.name"
TEST_CASE_ID = "mlflow.test.case_id"
SOURCE_RUN = "mlflow.sourceRun"  # mlflow.tracing.constant.TraceMetadataKey.SOURCE_RUN
ASSESSMENT_SOURCE_RUN = "mlflow.assessment.sourceRunId"  # AssessmentMetadataKey.SOURCE_RUN_ID
SOURCE_ID = "pytest-promptopt"
EXPECTED = "expected"  # the Expectation holding each check's expected value, by check name
SPLIT_TAG = "promptopt.split"  # a repair trace's part: held-out or in-sample
_PREVIEW = 1000  # MLflow's request/response preview length
_MAX_TAG = 8000
_MAX_NAME = 200
# What tells apart cases whose vars are equal (a suite's several prompts or providers, Python
# tests without parameters), in this order; first in the dict, so a truncated preview keeps them.
_DISAMBIGUATE = (("_prompt", "prompt_index"), ("_model", "model"), ("_case", "name"))
# Markdown the UI would interpret in a rationale (emphasis, code, links, HTML, tables, headings)
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>#|~&])")
_LIST_MARK = re.compile(r"^(\s*)([-+=])", re.M)  # a bullet, or a heading's underline
_NUMBERED = re.compile(r"^(\s*\d+)([.)])", re.M)  # `1.`: its dot is what makes it a list


def case_inputs(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Each case's trace inputs: its vars, plus what tells it apart from another case of the run
    with the same vars (`_prompt`, `_model`, then `_case`), so every request preview is unique in
    the run and stays the same across runs of the same suite."""
    inputs = [redact(dict(r.vars)) for r in results]
    for key, attribute in _DISAMBIGUATE:
        groups: dict[str, list[int]] = {}
        for i, value in enumerate(inputs):
            groups.setdefault(_preview(value), []).append(i)
        for members in groups.values():
            if len(members) < 2 or len({_attr(results[i], attribute) for i in members}) < 2:
                continue
            for i in members:
                inputs[i] = {key: _attr(results[i], attribute), **inputs[i]}
    return inputs


def _attr(result: CaseResult, attribute: str) -> Any:
    value = getattr(result, attribute)
    return scrub(value) if isinstance(value, str) else value


def _preview(inputs: Mapping[str, Any]) -> str:
    return _dumps(inputs)[:_PREVIEW]


def markdown_text(text: str) -> str:
    """`text` as MLflow's UI shows it: rationales are rendered as Markdown there, so the
    characters Markdown would read (`*`, `_`, `` ` ``, `[`, `<`, a list marker at a line's
    start, ...) are backslash-escaped, and line breaks kept (`(?i)^\\W*light\\W*$` keeps its
    asterisks on screen)."""
    escaped = _MARKDOWN.sub(r"\\\1", text)
    escaped = _NUMBERED.sub(r"\1\\\2", _LIST_MARK.sub(r"\1\\\2", escaped))
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


def check_labels(assertions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each check's name, as the report's `scores` keys it: its metric, else its type; a second
    one of the same name gets `#2`."""
    labels: list[str] = []
    for check in assertions:
        label = str(check.get("metric") or check.get("type") or "assertion")
        key, n = label, 1
        while key in labels:
            n += 1
            key = f"{label}#{n}"
        labels.append(key)
    return labels


# --------------------------------------------------------------------------- a suite's case


def build_case_trace(
    result: CaseResult,
    *,
    suite: str,
    run_id: str,
    experiment_id: str,
    inputs: Mapping[str, Any],
    linked: Sequence[Mapping[str, str]],
    default_ms: int,
) -> tuple[Any, Any]:
    """A finished root span and the TraceInfo (with its assessments) of one case of `suite`."""
    from mlflow.entities import Expectation, Feedback
    from mlflow.entities.assessment_source import AssessmentSource, AssessmentSourceType

    trace = _Ids()
    output = None if result.error else scrub(result.output or "")
    attributes = {"promptopt.prompt" if _messages(result.prompt) is None else "promptopt.messages": _prompt(result)}
    attributes.update({f"promptopt.{k}": v for k, v in _details(result).items()})
    meta = {ASSESSMENT_SOURCE_RUN: run_id}
    code = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=SOURCE_ID)
    human = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=SOURCE_ID)
    assessments = [
        _feedback(
            Feedback,
            f"{_prefix(suite)}/case/passed",
            None if result.error else bool(result.passed),
            result.reason,
            code,
            trace,
            meta,
            error=result.error,
        )
    ]
    expected: dict[str, Any] = {}
    for label, check in zip(check_labels(result.assertions), result.assertions):
        score = check.get("score")
        value = (
            float(score)
            if isinstance(score, (int, float)) and not isinstance(score, bool)
            else bool(check.get("passed"))
        )
        check_meta = {**meta, "promptopt.passed": str(bool(check.get("passed"))).lower()}
        check_meta["promptopt.type"] = str(check.get("type"))
        assessments.append(
            _feedback(Feedback, f"{_prefix(suite)}/check/{label}", value, check.get("reason"), code, trace, check_meta)
        )
        if check.get("value") is not None:
            expected[label] = _expected(check.get("value"))
    if expected:  # one Expectation (one column in MLflow's tables, which show ten columns at first)
        assessments.append(
            Expectation(
                name=EXPECTED, value=expected, source=human, trace_id=trace.id, span_id=trace.span_hex, metadata=meta
            )
        )
    tags = {"promptopt.suite": suite, "promptopt.case_id": result.case_id, "promptopt.status": result.status}
    if result.nodeid:
        tags[TEST_NAME] = result.nodeid
        case = _param_id(result.nodeid)
        if case:
            tags[TEST_CASE_ID] = case
    return _finished(
        trace,
        name=result.name or result.case_id,
        inputs=inputs,
        output=output,
        error=result.error,
        attributes=attributes,
        assessments=assessments,
        tags=tags,
        linked=linked,
        run_id=run_id,
        experiment_id=experiment_id,
        start_ms=int(result.started_at * 1000) if result.started_at else default_ms,
        duration_ms=_duration_ms(result.latency_ms, result.duration_s),
        usage=(result.prompt_tokens, result.completion_tokens, result.cost, result.model),
    )


# --------------------------------------------------------------------------- a repair's case


def build_repair_trace(
    case: Mapping[str, Any],
    *,
    suite: str,
    run_id: str,
    experiment_id: str,
    inputs: Mapping[str, Any],
    linked: Sequence[Mapping[str, str]],
    default_ms: int,
) -> tuple[Any, Any]:
    """The proposal's answer to one case of a repair (`RepairResult.cases`), with its verdict and
    the original prompt's as Feedback (`<suite>/proposal`, `<suite>/original`), the case's part
    (`held-out` or `in-sample`) as an Expectation and a tag."""
    from mlflow.entities import Expectation, Feedback
    from mlflow.entities.assessment_source import AssessmentSource, AssessmentSourceType

    trace = _Ids()
    after, before = case.get("proposal") or {}, case.get("original") or {}
    meta = {ASSESSMENT_SOURCE_RUN: run_id}
    code = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=SOURCE_ID)
    split = str(case.get("split") or "")
    assessments = []
    for role, scored in (("proposal", after), ("original", before)):
        verdict = None if scored.get("error") else bool(scored.get("passed"))
        reason = scored.get("reason") or ""
        if role == "original" and not scored.get("error"):
            reason = f"original answer: {scrub(str(scored.get('output') or ''))[:_PREVIEW]}\n{reason}"
        assessments.append(
            _feedback(
                Feedback,
                f"{_prefix(suite)}/repair/{role}",
                verdict,
                reason,
                code,
                trace,
                meta,
                error=scored.get("error"),
            )
        )
    human = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=SOURCE_ID)
    assessments.append(
        Expectation(name="split", value=split, source=human, trace_id=trace.id, span_id=trace.span_hex, metadata=meta)
    )
    attributes = {
        "promptopt.prompt": scrub(str(after.get("prompt") or "")),
        "promptopt.original_output": scrub(str(before.get("output") or "")),
        "promptopt.original_passed": before.get("passed"),
        "promptopt.split": split,
    }
    tags = {"promptopt.suite": suite, "promptopt.case_id": str(case.get("case_id") or ""), SPLIT_TAG: split}
    return _finished(
        trace,
        name=str(case.get("name") or case.get("case_id") or "case"),
        inputs=inputs,
        output=None if after.get("error") else scrub(str(after.get("output") or "")),
        error=after.get("error"),
        attributes=attributes,
        assessments=assessments,
        tags=tags,
        linked=linked,
        run_id=run_id,
        experiment_id=experiment_id,
        start_ms=default_ms,
        duration_ms=_duration_ms(after.get("latency_ms"), 0.0),
        usage=(None, None, None, ""),
    )


# --------------------------------------------------------------------------- the entities


class _Ids:
    """A trace's OpenTelemetry ids and MLflow's names for them."""

    def __init__(self) -> None:
        self.otel = random.getrandbits(128) or 1
        self.span = random.getrandbits(64) or 1
        self.id = f"tr-{self.otel:032x}"
        self.span_hex = f"{self.span:016x}"


def _feedback(
    kind: Any,
    name: str,
    value: Any,
    reason: Any,
    source: Any,
    trace: _Ids,
    meta: Mapping[str, str],
    *,
    error: str | None = None,
) -> Any:
    text = scrub(str(reason or ""))
    metadata = dict(meta)
    rationale = markdown_text(text) if text else None
    if rationale is not None and rationale != text:
        metadata["promptopt.reason"] = text[:_MAX_TAG]  # the plain text, for readers of the API
    return kind(
        name=_name(name),
        value=value,
        error=scrub(error) if error else None,
        rationale=rationale,
        source=source,
        trace_id=trace.id,
        span_id=trace.span_hex,
        metadata=metadata,
    )


def _finished(
    trace: _Ids,
    *,
    name: str,
    inputs: Mapping[str, Any],
    output: str | None,
    error: str | None,
    attributes: Mapping[str, Any],
    assessments: list[Any],
    tags: Mapping[str, str],
    linked: Sequence[Mapping[str, str]],
    run_id: str,
    experiment_id: str,
    start_ms: int,
    duration_ms: int,
    usage: tuple[int | None, int | None, float | None, str],
) -> tuple[Any, Any]:
    from mlflow.entities import Span, TraceInfo, TraceLocation, TraceState
    from mlflow.tracing.constant import (
        TRACE_SCHEMA_VERSION,
        TRACE_SCHEMA_VERSION_KEY,
        SpanAttributeKey,
        TraceMetadataKey,
        TraceTagKey,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

    name = scrub(name)  # a case's name may quote its vars
    request, response = _preview(inputs), _dumps(output)[:_PREVIEW]
    start_ns = start_ms * 1_000_000
    end_ns = start_ns + duration_ms * 1_000_000
    span_attributes = {
        SpanAttributeKey.REQUEST_ID: json.dumps(trace.id),
        SpanAttributeKey.SPAN_TYPE: json.dumps("LLM"),
        SpanAttributeKey.INPUTS: _dumps(inputs),
        SpanAttributeKey.OUTPUTS: _dumps(output),
        **{k: _dumps(v) for k, v in attributes.items()},
    }
    prompt_tokens, completion_tokens, cost, model = usage
    if prompt_tokens is not None or completion_tokens is not None:
        counted = {"input_tokens": prompt_tokens or 0, "output_tokens": completion_tokens or 0}
        counted["total_tokens"] = counted["input_tokens"] + counted["output_tokens"]
        span_attributes[SpanAttributeKey.CHAT_USAGE] = json.dumps(counted)
    if cost is not None:
        span_attributes[SpanAttributeKey.LLM_COST] = json.dumps({"total_cost": cost})
    # With tokens, a model and no cost, MLflow's store would price the call itself (through
    # litellm's online price list); the model stays in `promptopt.model` then.
    if model and (cost is not None or prompt_tokens is None and completion_tokens is None):
        span_attributes[SpanAttributeKey.MODEL] = json.dumps(scrub(model))
    events = []
    status = Status(StatusCode.OK)
    if error:
        status = Status(StatusCode.ERROR, scrub(error)[:_PREVIEW])
        message = {"exception.type": "ModelError", "exception.message": scrub(error)}
        events.append(Event("exception", message, timestamp=end_ns))
    span = Span(
        ReadableSpan(
            name=name,
            context=SpanContext(trace.otel, trace.span, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)),
            parent=None,
            attributes=span_attributes,
            events=events,
            start_time=start_ns,
            end_time=end_ns,
            status=status,
            # without it OpenTelemetry's default resource becomes trace tags (service.name=unknown_service)
            resource=Resource.get_empty(),
        )
    )
    metadata = {
        TRACE_SCHEMA_VERSION_KEY: str(TRACE_SCHEMA_VERSION),
        SOURCE_RUN: run_id,
        TraceMetadataKey.INPUTS: request,
        TraceMetadataKey.OUTPUTS: response,
        **{k: "" if v is None else str(v) for k, v in attributes.items() if k.startswith("promptopt.")},
    }
    all_tags = {
        TraceTagKey.TRACE_NAME: name,
        # what `mlflow.genai.evaluate` tags a trace of a dataset row with: sha256 of str(inputs)
        TraceTagKey.EVAL_REQUEST_ID: hashlib.sha256(str(dict(inputs)).encode("utf-8")).hexdigest(),
        **tags,
    }
    if linked:
        all_tags[TraceTagKey.LINKED_PROMPTS] = json.dumps([dict(v) for v in linked])
    info = TraceInfo(
        trace_id=trace.id,
        trace_location=TraceLocation.from_experiment_id(experiment_id),
        request_time=start_ms,
        state=TraceState.ERROR if error else TraceState.OK,
        request_preview=request,
        response_preview=response,
        execution_duration=duration_ms,
        trace_metadata={k: scrub(v)[:_MAX_TAG] for k, v in metadata.items()},
        tags={k: scrub(str(v))[:_MAX_TAG] for k, v in all_tags.items()},
        assessments=assessments,
    )
    return span, info


# --------------------------------------------------------------------------- values


def _details(result: CaseResult) -> dict[str, Any]:
    return {
        "model": scrub(result.model),
        "latency_ms": result.latency_ms,
        "latency_batch": result.latency_batch,
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "cost": result.cost,
        "calls": result.calls,
        "cache_hit": result.calls > 0 and result.cache_hits >= result.calls,
        "cache_hits": result.cache_hits,
        "score": result.score,
        "status": result.status,
    }


def _messages(prompt: str) -> list[dict[str, str]] | None:
    request = Request.from_prompt(prompt)
    if len(request.messages) == 1 and request.messages[0]["content"] == prompt:
        return None
    return [dict(m) for m in request.messages]


def _prompt(result: CaseResult) -> Any:
    """The prompt as the model got it: the rendered text, or a chat prompt's messages."""
    messages = _messages(result.prompt)
    return scrub(result.prompt) if messages is None else redact(messages)


def _expected(value: Any) -> Any:
    value = redact(value)
    return scrub(value) if isinstance(value, str) else json.loads(_dumps(value))


def _duration_ms(latency_ms: Any, duration_s: float) -> int:
    value = latency_ms if isinstance(latency_ms, (int, float)) else duration_s * 1000
    return max(0, int(value))


def _prefix(suite: str) -> str:
    """A suite's name as the first part of its assessments' names (`<suite>/case/passed`):
    MLflow's UI reads `a/b/c` as metric `b`, shown as `c`, so the suite name holds no `/`."""
    return scrub(suite).replace("/", "-")


def _name(name: str) -> str:
    return scrub(name)[:_MAX_NAME]


def _param_id(nodeid: str) -> str | None:
    """The parametrize id of a node id (`test_x[a-b]` -> `a-b`), like MLflow's `callspec.id`."""
    match = re.search(r"\[(.*)\]$", nodeid.rsplit("::", 1)[-1])
    return match.group(1) if match else None


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
