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

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..models.base import Request
from ..records import CaseResult
from ..redact import redact, scrub
from .trace_entities import PREVIEW, SOURCE_RUN, TraceIds, dumps, feedback, finished_trace, preview

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
]

# mlflow.pytest.session.TAG_TEST_NAME / TAG_CASE_ID (MLflow's experimental pytest plugin)
TEST_NAME = "mlflow.test.name"
TEST_CASE_ID = "mlflow.test.case_id"
ASSESSMENT_SOURCE_RUN = "mlflow.assessment.sourceRunId"  # AssessmentMetadataKey.SOURCE_RUN_ID
SOURCE_ID = "pytest-promptopt"
EXPECTED = "expected"  # the Expectation holding each check's expected value, by check name
SPLIT_TAG = "promptopt.split"  # a repair trace's part: held-out or in-sample
# What tells apart cases whose vars are equal (a suite's several prompts or providers, Python
# tests without parameters), in this order; first in the dict, so a truncated preview keeps them.
_DISAMBIGUATE = (("_prompt", "prompt_index"), ("_model", "model"), ("_case", "name"))


def case_inputs(results: Sequence[CaseResult]) -> list[dict[str, Any]]:
    """Each case's trace inputs: its vars, plus what tells it apart from another case of the run
    with the same vars (`_prompt`, `_model`, then `_case`), so every request preview is unique in
    the run and stays the same across runs of the same suite."""
    inputs = [redact(dict(r.vars)) for r in results]
    for key, attribute in _DISAMBIGUATE:
        groups: dict[str, list[int]] = {}
        for i, value in enumerate(inputs):
            groups.setdefault(preview(value), []).append(i)
        for members in groups.values():
            if len(members) < 2 or len({_attr(results[i], attribute) for i in members}) < 2:
                continue
            for i in members:
                inputs[i] = {key: _attr(results[i], attribute), **inputs[i]}
    return inputs


def _attr(result: CaseResult, attribute: str) -> Any:
    value = getattr(result, attribute)
    return scrub(value) if isinstance(value, str) else value


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

    trace = TraceIds()
    output = None if result.error else scrub(result.output or "")
    attributes = {"promptopt.prompt" if _messages(result.prompt) is None else "promptopt.messages": _prompt(result)}
    attributes.update({f"promptopt.{k}": v for k, v in _details(result).items()})
    meta = {ASSESSMENT_SOURCE_RUN: run_id}
    code = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=SOURCE_ID)
    human = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=SOURCE_ID)
    assessments = [
        feedback(
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
            feedback(Feedback, f"{_prefix(suite)}/check/{label}", value, check.get("reason"), code, trace, check_meta)
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
    return finished_trace(
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

    trace = TraceIds()
    after, before = case.get("proposal") or {}, case.get("original") or {}
    meta = {ASSESSMENT_SOURCE_RUN: run_id}
    code = AssessmentSource(source_type=AssessmentSourceType.CODE, source_id=SOURCE_ID)
    split = str(case.get("split") or "")
    assessments = []
    for role, scored in (("proposal", after), ("original", before)):
        verdict = None if scored.get("error") else bool(scored.get("passed"))
        reason = scored.get("reason") or ""
        if role == "original" and not scored.get("error"):
            reason = f"original answer: {scrub(str(scored.get('output') or ''))[:PREVIEW]}\n{reason}"
        assessments.append(
            feedback(
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
    return finished_trace(
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
        "cache_hit": result.cache_hits > 0 and result.calls == 0,  # no model was called: all from the cache
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
    return scrub(value) if isinstance(value, str) else json.loads(dumps(value))


def _duration_ms(latency_ms: Any, duration_s: float) -> int:
    value = latency_ms if isinstance(latency_ms, (int, float)) else duration_s * 1000
    return max(0, int(value))


def _prefix(suite: str) -> str:
    """A suite's name as the first part of its assessments' names (`<suite>/case/passed`):
    MLflow's UI reads `a/b/c` as metric `b`, shown as `c`, so the suite name holds no `/`."""
    return scrub(suite).replace("/", "-")


def _param_id(nodeid: str) -> str | None:
    """The parametrize id of a node id (`test_x[a-b]` -> `a-b`), like MLflow's `callspec.id`."""
    match = re.search(r"\[(.*)\]$", nodeid.rsplit("::", 1)[-1])
    return match.group(1) if match else None
