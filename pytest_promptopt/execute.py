"""Execute one case: call the model through the cache, then grade the output.

The same function runs in the pytest process, an xdist worker or a Spark executor: the runner
changes, the case does not. The runner hands in what grading needs besides the case: the judges
of model-graded assertions (`judging.Judges`, bound here to the case) and the response cache,
which also keeps `similar`'s embeddings.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .assertions.base import AssertionConfigError, AssertionContext, AssertionEvaluationError
from .assertions.scoring import CaseGrade, Outcome, grade_case
from .cache import CallStats, ResponseCache
from .judging import Judge, Judges
from .models.base import Model, ModelError, Request, Response
from .records import CaseResult
from .redact import redact, scrub
from .repeats import merge_samples
from .sandbox import Sandbox, ScriptFault, sandbox_for
from .sandbox.scripts import run_transform
from .suite.model import Case

__all__ = [
    "AnsweredCase",
    "answer_batch",
    "case_requests",
    "error_result",
    "execute_batch",
    "execute_case",
    "fill_grade",
    "fill_response",
    "grade_answered",
    "grading_context",
    "json_safe",
    "model_error",
    "new_result",
    "output_text",
    "raised",
    "transformed",
]


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
    result.latency_batch = response.batch_size if response.batch_size > 1 else None


def fill_grade(result: CaseResult, grade: CaseGrade) -> None:
    result.passed = grade.passed
    result.score = grade.score
    result.reason = grade.reason
    result.assertions = [json_safe(o.to_dict()) for o in grade.outcomes]
    result.scores = score_labels(grade.outcomes)
    result.named_scores = dict(grade.named_scores)
    result.named_weights = dict(grade.named_weights)


def new_result(case: Case, nodeid: str = "") -> CaseResult:
    """A case's record before the model answers: what it asked, of which model."""
    return CaseResult(
        case_id=case.case_id,
        name=case.name,
        nodeid=nodeid,
        vars=json_safe(dict(case.vars)),
        prompt=case.rendered_prompt,
        prompt_index=case.prompt_index,
        test_index=case.test_index,
        position=case.position,
        model=case.model.display,
        repeats=case.repeats,
        # none for a prompt that could not be had: its reference is not a text to register or show
        template=None if case.prompt.unavailable is not None else case.prompt.template,
        registry_prompts=[case.prompt.registry_uri] if case.prompt.registry_uri else [],
        model_params=redact(json_safe(dict(case.model.params))),
        provider_transform=case.model.transform,
        started_at=time.time(),
    )


def error_result(case: Case, nodeid: str, message: str) -> CaseResult:
    """A case that got no answer: a model that cannot be built, a lost worker, a failed job."""
    result = new_result(case, nodeid)
    result.error = message
    return result


def raised(exc: BaseException) -> str:
    """What escaped a model adapter or a check, for the case's error: its type and message.

    Anything but KeyboardInterrupt ends as the error of the case it came from: an exception an
    adapter or grader did not expect (an `IndexError` in a provider's reply), `SystemExit` from
    user code run in this process (`sys.exit()` in a Python test's check or an adapter), pytest's
    own outcomes raised inside (a check calling `pytest.fail`, pytest-timeout's "Timeout (>Ns)
    from pytest-timeout"). KeyboardInterrupt in this process (Ctrl-C, or in-process user code
    raising it) stops the run, as pytest does; a suite's code checks run in the sandbox's worker
    processes, where anything they raise is their case's error (docs/faults.md)."""
    text = scrub(str(exc))
    name = type(exc).__name__
    if isinstance(exc, SystemExit):
        return f"user code called sys.exit({exc.code}) instead of returning"  # the sandbox's words
    if text and any(c.__name__ == "OutcomeException" for c in type(exc).__mro__):
        return text  # pytest.fail's own text says it all ("Timeout (>2.0s) from pytest-timeout.")
    return f"{name}: {text}" if text else name


def model_error(case: Case, nodeid: str, exc: BaseException) -> CaseResult:
    return error_result(case, nodeid, f"model error ({case.model.display}): {scrub(str(exc))}")


def _judge(judges: Judges | None, cache: ResponseCache, stats: CallStats) -> Judge | None:
    """The judge of a case's model-graded assertions (judging.py): its calls go through `cache`
    and count into the case's `stats`. None without `judges`: such assertions are then errors."""
    return judges.bind(stats, cache) if judges is not None else None


def transformed(case: Case, response: Response, sandbox: Sandbox) -> Any:
    """The answer after the provider's `transform`, then the test's `options.transform`
    (promptfoo's transformRunEvalResponse, in that order, each on what the one before returned):
    the text, or what a transform returned (an object stays an object for code checks)."""
    value: Any = response.text
    if not (case.model.transform or case.transform):
        return value
    context: dict[str, Any] = {
        "vars": json_safe(dict(case.vars)),
        "prompt": {"raw": case.prompt.template, "label": case.prompt.label, "template": case.prompt.template},
    }
    if case.model.transform:  # promptfoo gives it no metadata
        what = f"transform of provider {case.model.display} in {case.suite.file}: {case.name}"
        value = run_transform(sandbox, case.model.transform, value, context, case.base_dir, case.script_timeout_s, what)
    if case.transform:
        what = f"transform of {case.suite.file}: {case.name}"
        context["metadata"] = {}
        value = run_transform(sandbox, case.transform, value, context, case.base_dir, case.script_timeout_s, what)
    return value


def output_text(value: Any) -> str:
    """The output checks grade and reports show: a transform's object as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def grading_context(
    case: Case,
    response: Response,
    value: Any,
    judge: Judge | None,
    embeddings: ResponseCache | None,
    sandbox: Sandbox,
) -> AssertionContext:
    """What `case`'s assertions see besides the output: `value` is the answer after the
    transforms (`transformed`), kept as an object for code checks when it is one."""
    return AssertionContext(
        vars=case.vars,
        prompt=case.rendered_prompt,
        response=response,
        base_dir=case.base_dir,
        judge=judge,
        embeddings=embeddings,
        sandbox=sandbox,
        script_timeout_s=case.script_timeout_s,
        output_value=None if isinstance(value, str) else value,
        test={
            "description": case.description,
            "vars": json_safe(dict(case.vars)),
            "assert": json_safe([a.to_dict() for a in case.assertions]),
            "threshold": case.threshold,
            "options": {"transform": case.transform} if case.transform else {},
            # promptfoo's context.test is the test case: its metadata (defaultTest's merged in) too
            "metadata": json_safe(dict(case.metadata)),
        },
        provider={"id": case.model.id, "label": case.model.label},
    )


def _grade(
    case: Case,
    result: CaseResult,
    response: Response,
    judge: Judge | None,
    embeddings: ResponseCache | None,
    sandbox: Sandbox | None = None,
) -> None:
    fill_response(result, response)
    result.model = case.model.label or result.model  # a suite's provider label names it in reports
    with sandbox_for(sandbox) as box:
        try:
            value = transformed(case, response, box)
        except ScriptFault as exc:
            result.error = f"transform error: {scrub(str(exc))}"
            return
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # see `raised`
            result.error = f"transform error: {raised(exc)}"
            return
        text = output_text(value)
        result.output = text
        ctx = grading_context(case, response, value, judge, embeddings, box)
        try:
            fill_grade(result, grade_case(text, case.assertions, ctx, case.threshold))
        except (AssertionEvaluationError, AssertionConfigError) as exc:
            result.error = f"assertion error: {scrub(str(exc))}"
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # see `raised`
            result.error = f"assertion error: {raised(exc)}"


def _grade_samples(
    case: Case,
    result: CaseResult,
    answers: Iterable[Response | ModelError],
    judge: Judge | None,
    embeddings: ResponseCache | None,
    sandbox: Sandbox | None = None,
) -> None:
    """Grade the case's answers, one per repeat (`case.repeats`), into `result`. Without repeats
    the record is its one sample, as it always was; with them each sample is graded apart and
    `merge_samples` folds them in. The first model or assertion fault ends the case (an error
    whatever the other samples would say), and a lazy `answers` asks for no more."""
    samples: list[CaseResult] = []
    for answer in answers:
        sample = result if case.repeats == 1 else dataclasses.replace(result)
        if isinstance(answer, ModelError):
            sample.error = f"model error ({case.model.display}): {scrub(str(answer))}"
        else:
            _grade(case, sample, answer, judge, embeddings, sandbox)
        samples.append(sample)
        if sample.error:
            break
    if case.repeats > 1:
        merge_samples(result, samples, case.repeats)


def case_requests(case: Case, params: Mapping[str, Any] | None = None) -> list[Request]:
    """The requests `case` makes to its model: one per repeat, repeat i its own cache entry
    (repeat 0's key is that of a run without repeats)."""
    request = Request.from_prompt(case.rendered_prompt, params)
    return [dataclasses.replace(request, repeat=repeat) for repeat in range(case.repeats)]


def execute_case(
    case: Case,
    model: Model,
    cache: ResponseCache,
    nodeid: str = "",
    params: Mapping[str, Any] | None = None,
    judges: Judges | None = None,
    sandbox: Sandbox | None = None,
) -> CaseResult:
    """Run `case` on `model`, `case.repeats` times (`case_requests`), graded with `judges` for
    its model-graded assertions (through `cache`, counted in the case's calls). Model and
    assertion faults become `result.error`, never exceptions. A case that cannot run
    (`case.error`) is that error, without a call. User code (transforms, code checks) runs in
    `sandbox` (a fresh one for the case without it)."""
    if case.error is not None:
        return error_result(case, nodeid, case.error)
    stats = CallStats()
    started = time.perf_counter()
    result = new_result(case, nodeid)
    requests = case_requests(case, params)

    def answers() -> Iterator[Response | ModelError]:
        for request in requests:
            answer: Response | ModelError
            try:
                answer = cache.fetch(model, request, stats)
            except ModelError as exc:
                answer = exc
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # see `raised`: an adapter's own fault is a model fault
                answer = ModelError(raised(exc))
            yield answer  # outside the `try`: closing the generator must not be caught above

    _grade_samples(case, result, answers(), _judge(judges, cache, stats), cache, sandbox)
    result.calls = stats.calls
    result.cache_hits = stats.cache_hits
    result.duration_s = time.perf_counter() - started
    return result


@dataclasses.dataclass
class AnsweredCase:
    """A case of a batch with its answers (one per repeat), not yet graded."""

    case: Case
    result: CaseResult
    answers: list[Response | ModelError]
    stats: CallStats
    share_s: float  # its share of the batch's wall time


def answer_batch(cases: Sequence[tuple[Case, str]], model: Model, cache: ResponseCache) -> list[AnsweredCase]:
    """Answer several cases on one model that answers batches (`generate_batch`): one batched
    call for the cache misses (every repeat of every case). A model fault errors the cases it
    answered for, not the cached ones."""
    started = time.perf_counter()
    results = [new_result(case, nodeid) for case, nodeid in cases]
    stats = [CallStats() for _ in cases]
    owners: list[int] = []  # the case of each request
    requests: list[Request] = []
    for index, (case, _) in enumerate(cases):
        for request in case_requests(case):
            owners.append(index)
            requests.append(request)
    try:
        responses = cache.fetch_batch(model, requests, [stats[i] for i in owners])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # see `raised`: the batch's cases get its error
        responses = [ModelError(raised(exc))] * len(requests)
    answers: list[list[Response | ModelError]] = [[] for _ in cases]
    for owner, response in zip(owners, responses):
        answers[owner].append(response)
    # cases of one batch share its wall time, as their latencies do (models/local.py)
    share = (time.perf_counter() - started) / max(1, len(cases))
    return [
        AnsweredCase(case, result, answered, stat, share)
        for (case, _), result, answered, stat in zip(cases, results, answers, stats)
    ]


def grade_answered(
    answered: AnsweredCase, cache: ResponseCache, judges: Judges | None = None, sandbox: Sandbox | None = None
) -> CaseResult:
    """Grade a batch's case as `execute_case` does; its judges' calls count in its calls."""
    begun = time.perf_counter()
    result, stats = answered.result, answered.stats
    _grade_samples(answered.case, result, answered.answers, _judge(judges, cache, stats), cache, sandbox)
    result.calls = stats.calls
    result.cache_hits = stats.cache_hits
    result.duration_s = answered.share_s + (time.perf_counter() - begun)
    return result


def execute_batch(
    cases: Sequence[tuple[Case, str]],
    model: Model,
    cache: ResponseCache,
    judges: Judges | None = None,
    sandbox: Sandbox | None = None,
) -> list[CaseResult]:
    """Run several cases on a batching model: `answer_batch`, then grade each case in turn."""
    return [grade_answered(answered, cache, judges, sandbox) for answered in answer_batch(cases, model, cache)]
