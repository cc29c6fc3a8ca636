"""A trace as the finished entities MLflow's tracing store takes (a root span and a TraceInfo with
its assessments), and the text rules of MLflow's trace views: request and response previews of
1000 characters, rationales rendered as Markdown (`markdown_text`). trace_build.py decides what a
case's or a repair case's trace holds; traces.py writes them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..redact import scrub

__all__ = [
    "MAX_TAG",
    "PREVIEW",
    "SOURCE_RUN",
    "TraceIds",
    "dumps",
    "feedback",
    "finished_trace",
    "markdown_text",
    "preview",
]

PREVIEW = 1000  # MLflow's request/response preview length
MAX_TAG = 8000
_MAX_NAME = 200
SOURCE_RUN = "mlflow.sourceRun"  # mlflow.tracing.constant.TraceMetadataKey.SOURCE_RUN
# Markdown the UI would interpret in a rationale (emphasis, code, links, HTML, tables, headings)
_MARKDOWN = re.compile(r"([\\`*_{}\[\]<>#|~&])")
_LIST_MARK = re.compile(r"^(\s*)([-+=])", re.M)  # a bullet, or a heading's underline
_NUMBERED = re.compile(r"^(\s*\d+)([.)])", re.M)  # `1.`: its dot is what makes it a list


class TraceIds:
    """A trace's OpenTelemetry ids and MLflow's names for them."""

    def __init__(self) -> None:
        self.otel = random.getrandbits(128) or 1
        self.span = random.getrandbits(64) or 1
        self.id = f"tr-{self.otel:032x}"
        self.span_hex = f"{self.span:016x}"


def feedback(
    kind: Any,
    name: str,
    value: Any,
    reason: Any,
    source: Any,
    trace: TraceIds,
    meta: Mapping[str, str],
    *,
    error: str | None = None,
) -> Any:
    text = scrub(str(reason or ""))
    metadata = dict(meta)
    rationale = markdown_text(text) if text else None
    if rationale is not None and rationale != text:
        metadata["promptopt.reason"] = text[:MAX_TAG]  # the plain text, for readers of the API
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


def finished_trace(
    trace: TraceIds,
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
    request, response = preview(inputs), dumps(output)[:PREVIEW]
    start_ns = start_ms * 1_000_000
    end_ns = start_ns + duration_ms * 1_000_000
    span_attributes = {
        SpanAttributeKey.REQUEST_ID: json.dumps(trace.id),
        SpanAttributeKey.SPAN_TYPE: json.dumps("LLM"),
        SpanAttributeKey.INPUTS: dumps(inputs),
        SpanAttributeKey.OUTPUTS: dumps(output),
        **{k: dumps(v) for k, v in attributes.items()},
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
        status = Status(StatusCode.ERROR, scrub(error)[:PREVIEW])
        # The message says where it arose (the model, a check, the case's own template or file).
        message = {"exception.type": "CaseError", "exception.message": scrub(error)}
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
        trace_metadata={k: scrub(v)[:MAX_TAG] for k, v in metadata.items()},
        tags={k: scrub(str(v))[:MAX_TAG] for k, v in all_tags.items()},
        assessments=assessments,
    )
    return span, info


def markdown_text(text: str) -> str:
    """`text` as MLflow's UI shows it: rationales are rendered as Markdown there, so the
    characters Markdown would read (`*`, `_`, `` ` ``, `[`, `<`, a list marker at a line's
    start, ...) are backslash-escaped, and line breaks kept (`(?i)^\\W*light\\W*$` keeps its
    asterisks on screen)."""
    escaped = _MARKDOWN.sub(r"\\\1", text)
    escaped = _NUMBERED.sub(r"\1\\\2", _LIST_MARK.sub(r"\1\\\2", escaped))
    return escaped.replace("\r\n", "\n").replace("\n", "  \n")


def preview(inputs: Mapping[str, Any]) -> str:
    return dumps(inputs)[:PREVIEW]


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _name(name: str) -> str:
    return scrub(name)[:_MAX_NAME]
