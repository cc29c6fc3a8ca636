"""Execute one case: call the model through the cache, then grade the output.

The same function runs in the pytest process, an xdist worker or (later) a Spark executor: the
runner changes, the case does not.
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable, Mapping, Sequence

from .assertions.base import AssertionConfigError, AssertionContext, AssertionEvaluationError
from .assertions.scoring import CaseGrade, Outcome, grade_case
from .cache import CallStats, ResponseCache
from .models.base import Model, ModelError, Request, Response
from .redact import redact, scrub
from .results import CaseResult
from .suite.model import Case

__all__ = ["error_result", "execute_batch", "execute_case", "fill_grade", "fill_response", "json_safe", "model_error", "new_result"]


def json_safe(value: Any) -> Any:
    """Vars may hold YAML dates and the like; reports carry their JSON form."""
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))


def score_labels(outcomes: Iterable[Outcome]) -> dict[str, float]:
    """Scores keyed by assertion (its metric name, else its type; repeats get `#2`, `#3`...)."""
    scores: dict[str, float] = {}
    for outcome in outcomes:
        label = outcome.metric or outcome.type
        key, n = label, 1
        while key in scores:
            n += 1
            key = f"{label}#{n}"
        scores[key] = outcome.score
    return scores


def fill_response(result: CaseResult, response: Response) -> None:
    result.output = response.text
    result.latency_ms = response.latency_ms
    result.prompt_tokens = response.prompt_tokens
    result.completion_tokens = response.completion_tokens
    result.cost = response.cost
    result.model = response.model or result.model


def fill_grade(result: CaseResult, grade: CaseGrade) -> None:
    result.passed = grade.passed
    result.score = grade.score
    result.reason = grade.reason
    result.assertions = [json_safe(o.to_dict()) for o in grade.outcomes]
    result.scores = score_labels(grade.outcomes)
    result.named_scores = dict(grade.named_scores)


def new_result(case: Case, nodeid: str = "") -> CaseResult:
    """A case's record before the model answers: what it asked, of which model."""
    return CaseResult(
        case_id=case.case_id,
        name=case.name,
        nodeid=nodeid,
        vars=json_safe(dict(case.vars)),
        prompt=case.rendered_prompt,
        prompt_index=case.prompt_index,
        test_index=case.test_index, position=case.position,
        model=case.model.display,
        template=case.prompt.template,
        registry_prompts=[case.prompt.registry_uri] if case.prompt.registry_uri else [],
        model_params=redact(json_safe(dict(case.model.params))),
    )


def error_result(case: Case, nodeid: str, message: str) -> CaseResult:
    """A case that got no answer: a model that cannot be built, a lost worker, a failed job."""
    result = new_result(case, nodeid)
    result.error = message
    return result


def model_error(case: Case, nodeid: str, exc: BaseException) -> CaseResult:
    return error_result(case, nodeid, f"model error ({case.model.display}): {scrub(str(exc))}")


def _grade(case: Case, result: CaseResult, response: Response) -> None:
    fill_response(result, response)
    result.model = case.model.label or result.model  # a suite's provider label names it in reports
    ctx = AssertionContext(vars=case.vars, prompt=case.rendered_prompt, response=response, base_dir=case.base_dir)
    try:
        fill_grade(result, grade_case(response.text, case.assertions, ctx, case.threshold))
    except (AssertionEvaluationError, AssertionConfigError) as exc:
        result.error = f"assertion error: {scrub(str(exc))}"


def execute_case(case: Case, model: Model, cache: ResponseCache, nodeid: str = "", params: Mapping[str, Any] | None = None) -> CaseResult:
    """Run `case` on `model`. Model and assertion faults become `result.error`, never exceptions."""
    stats = CallStats()
    started = time.perf_counter()
    result = new_result(case, nodeid)
    try:
        response = cache.fetch(model, Request.from_prompt(case.rendered_prompt, params), stats)
    except ModelError as exc:
        result.error = f"model error ({case.model.display}): {scrub(str(exc))}"
    else:
        _grade(case, result, response)
    result.calls = stats.calls
    result.cache_hits = stats.cache_hits
    result.duration_s = time.perf_counter() - started
    return result


def execute_batch(cases: Sequence[tuple[Case, str]], model: Model, cache: ResponseCache) -> list[CaseResult]:
    """Run several cases on one model that answers batches (`generate_batch`): one batched call
    for the cache misses, then grade each case as `execute_case` does. A model fault errors the
    cases it answered for, not the cached ones."""
    started = time.perf_counter()
    results = [new_result(case, nodeid) for case, nodeid in cases]
    requests = [Request.from_prompt(case.rendered_prompt) for case, _ in cases]
    stats = [CallStats() for _ in cases]
    responses = cache.fetch_batch(model, requests, stats)
    # cases of one batch share its wall time, as their latencies do (models/local.py)
    share = (time.perf_counter() - started) / max(1, len(cases))
    for (case, _), result, response, stat in zip(cases, results, responses, stats):
        begun = time.perf_counter()
        if isinstance(response, ModelError):
            result.error = f"model error ({case.model.display}): {scrub(str(response))}"
        else:
            _grade(case, result, response)
        result.calls = stat.calls
        result.cache_hits = stat.cache_hits
        result.duration_s = share + (time.perf_counter() - begun)
    return results
