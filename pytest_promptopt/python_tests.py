"""Python-test API: the `prompt_model` and `prompt_check` fixtures' objects.

A Python test is one case of a suite (named by `@pytest.mark.promptopt(suite=...)`, else its
module), so it reaches the same summary, gates and reports as a suite-file case. A repeated test
(`promptopt(repeat=N)` or `--promptopt-repeat N`) is N items, one per sample, because each sample
needs fresh function fixtures; the controller folds their records back into one case with N
repeats (`fold_repeated_tests`), so the statistics read them as a suite-file case's repeats.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .assertions.base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError
from .assertions.scoring import CaseGrade, grade_case, render_assertion
from .cache import CallStats, ResponseCache
from .execute import fill_grade, fill_response, json_safe, raised
from .judging import Judges
from .models.base import Message, Model, ModelError, Request, Response
from .models.specs import ModelSpec, parse_model_spec
from .records import CaseResult
from .redact import redact, scrub
from .repeats import split_repeat
from .report.failure import describe_case
from .sandbox import DEFAULT_SCRIPT_TIMEOUT_S, Sandbox
from .session import PromptoptSession
from .suite.cases import python_case_id
from .suite.model import Repeats
from .suite_info import SuiteInfo
from .tolerance import tolerate

__all__ = [
    "REPEAT_FIXTURE",
    "CheckFailed",
    "ModelClient",
    "PromptCheck",
    "PythonCaseRecorder",
    "python_repeats",
]

# The indirect parameter that makes a repeated test's items; also a fixture a test may request.
REPEAT_FIXTURE = "promptopt_repeat"


class CheckFailed(AssertionError):
    """`prompt_check` found a failing assertion (pytest shows the output and each score)."""


@dataclass
class PythonCaseRecorder:
    """Everything a Python prompt test did, turned into one `CaseResult` at teardown."""

    suite: SuiteInfo
    nodeid: str
    name: str
    vars: Mapping[str, Any]
    base_dir: Path
    repeat: int = 0  # which sample of a repeated test this item is; `prompt_model`'s default
    stats: CallStats = field(default_factory=CallStats)
    last_prompt: str = ""
    last_response: Response | None = None
    grades: list[CaseGrade] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    model_spec: ModelSpec | None = None
    registry_prompts: list[str] = field(default_factory=list)  # registry versions the model was given
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)  # wall clock, for the suite run's start in MLflow
    phases: dict[str, str] = field(default_factory=dict)  # pytest's phases: when -> outcome (`saw`)
    call_passed: bool = False

    def note_prompt(self, prompt: str | Sequence[Message]) -> None:
        """Remember the Prompt Registry version of a prompt given to the model (a `RenderedPrompt`
        of `Prompt.from_registry(...)`, as the prompt or a chat message's content)."""
        parts = [prompt] if isinstance(prompt, str) else [m.get("content") for m in prompt if isinstance(m, Mapping)]
        for part in parts:
            uri = getattr(part, "registry_uri", None)
            if uri is not None and uri not in self.registry_prompts:
                self.registry_prompts.append(uri)

    def saw(self, when: str, outcome: str, raised: str | None, timed_out: bool = False) -> None:
        """How one phase of the test ended, as pytest reports it (`outcome`: passed, failed,
        skipped or xfailed; `raised`: what, when it raised); `timed_out`: pytest-timeout ended
        the call, an error of the test as a model's timeout is."""
        self.phases[when] = outcome
        if when == "call":
            self.call_passed = outcome == "passed"
            if outcome == "failed" and timed_out and not self.error:
                self.error = f"the test did not finish: {raised}"
        elif outcome == "failed" and raised is not None and not self.error:
            self.error = f"the test's {when} failed: {raised}"  # a fixture raised

    def outcome(self) -> CaseResult | None:
        """The test's case as pytest reported the test: an error when its setup or teardown
        raised or the model failed, failed when its call did, and no case when pytest skipped
        it (`pytest.skip`, a skip mark: no case, as in pytest's own summary)."""
        if "skipped" in self.phases.values():
            return None
        return self.result(self.call_passed)

    def result(self, call_passed: bool) -> CaseResult:
        result = CaseResult(
            case_id=python_case_id(self.nodeid),
            name=self.name,
            nodeid=self.nodeid,
            vars=json_safe(dict(self.vars)),
            prompt=self.last_prompt,
            error=self.error,
        )
        if self.model_spec is not None and not self.model_spec.id.startswith("object:"):
            result.model_params = redact(json_safe(dict(self.model_spec.params)))
        if self.last_response is not None:
            fill_response(result, self.last_response)
        if self.outputs:
            result.output = self.outputs[-1]
        if self.grades:
            merged = CaseGrade(
                passed=all(g.passed for g in self.grades),
                score=sum(g.score for g in self.grades) / len(self.grades),
                reason=next((g.reason for g in self.grades if not g.passed), "All assertions passed"),
                outcomes=tuple(o for g in self.grades for o in g.outcomes),
                named_scores={k: v for g in self.grades for k, v in g.named_scores.items()},
            )
            fill_grade(result, merged)
        result.passed = call_passed and all(g.passed for g in self.grades) and not self.error
        if not result.reason:
            result.reason = "test passed" if result.passed else "test failed"
        result.calls = self.stats.calls
        result.cache_hits = self.stats.cache_hits
        result.duration_s = time.perf_counter() - self.started
        result.started_at = self.started_at
        result.registry_prompts = list(self.registry_prompts)  # its suite run links these versions
        return result


class ModelClient:
    """The configured model, callable with a prompt string or chat messages.

    >>> answer = prompt_model("What is the capital of France? One word.")
    >>> answer.text, answer.latency_ms, answer.completion_tokens
    """

    def __init__(self, session: PromptoptSession, spec: ModelSpec, recorder: PythonCaseRecorder) -> None:
        self.session = session
        self.spec = spec
        self._recorder = recorder

    @property
    def name(self) -> str:
        return self.spec.display

    @property
    def model(self) -> Model:
        return self.session.model_for(self.spec)

    def __call__(self, prompt: str | Sequence[Message], *, repeat: int | None = None, **params: Any) -> Response:
        """`repeat` picks which independent sample to take (its own cache entry). By default it
        is the item's sample of a repeated test (0 otherwise), so N items are N samples, not one
        replayed."""
        __tracebackhide__ = True
        if repeat is None:
            repeat = self._recorder.repeat
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 0:
            raise TypeError(f"prompt_model(..., repeat=...): a sample index 0, 1, ..., got {repeat!r}")
        if not isinstance(prompt, str):
            prompt = list(prompt)  # messages are read twice below
        self._recorder.note_prompt(prompt)  # a RenderedPrompt links its registry version to this test
        if isinstance(prompt, str):
            prompt = str(prompt)  # the request holds plain text
        request = Request.from_prompt(prompt, params)
        if repeat:
            request = dataclasses.replace(request, repeat=repeat)
        self._recorder.last_prompt = request.prompt
        self._recorder.model_spec = self.spec
        try:
            response = self.session.cache.fetch(self.model, request, self._recorder.stats)
        except ModelError as exc:
            self._recorder.error = f"model error ({self.spec.display}): {scrub(str(exc))}"
            raise
        except (KeyboardInterrupt, pytest.exit.Exception):
            raise
        except BaseException as exc:  # an adapter's own fault (or a timeout) is a model fault, an error
            self._recorder.error = f"model error ({self.spec.display}): {raised(exc)}"
            raise
        self._recorder.last_response = response
        return response


class PromptCheck:
    """Scored assertions on an output; fails the test with the output and every score.

    >>> prompt_check(answer, contains("Paris"), regex(r"^[A-Z]"))
    >>> prompt_check(answer, icontains("paris"), word_count(max=5), threshold=0.5)

    Model-graded assertions ask the session's `judges`; `similar` keeps its embeddings in the
    session's response cache (`embeddings`).
    """

    def __init__(
        self,
        recorder: PythonCaseRecorder,
        gates_text: str | None,
        judges: Judges | None = None,
        embeddings: ResponseCache | None = None,
        sandbox: Sandbox | None = None,
        script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S,
    ) -> None:
        self._recorder = recorder
        self._gates_text = gates_text
        self._judges = judges
        self._embeddings = embeddings
        self._sandbox = sandbox  # runs javascript checks and python references (the session's)
        self._script_timeout_s = script_timeout_s

    def __call__(
        self,
        output: Response | str,
        *assertions: Assertion,
        threshold: float | None = None,
        vars: Mapping[str, Any] | None = None,
    ) -> CaseGrade:
        __tracebackhide__ = True
        if not assertions:
            raise TypeError("prompt_check(output, *assertions): give at least one assertion, e.g. contains('Paris')")
        response = output if isinstance(output, Response) else self._recorder.last_response
        text = str(output)
        variables = {**self._recorder.vars, **(vars or {})}
        # model-graded assertions: judge calls count as this test's calls
        judge = self._judges.bind(self._recorder.stats) if self._judges is not None else None
        ctx = AssertionContext(
            variables,
            self._recorder.last_prompt,
            response,
            self._recorder.base_dir,
            judge,
            self._embeddings,
            sandbox=self._sandbox,
            script_timeout_s=self._script_timeout_s,
        )
        try:
            rendered = [render_assertion(_as_assertion(a), variables) for a in assertions]
            grade = grade_case(text, rendered, ctx, threshold)
        except AssertionConfigError as exc:
            # A malformed check is the test's fault, not the output's: an error, not a failure.
            self._recorder.error = f"assertion error: {exc}"
            raise
        except AssertionEvaluationError as exc:
            self._recorder.error = f"assertion error: {exc}"
            raise
        except (KeyboardInterrupt, pytest.exit.Exception):
            raise
        except BaseException as exc:  # a check's own fault (sys.exit, a timeout): an error, not a failure
            self._recorder.error = f"assertion error: {raised(exc)}"
            raise
        self._recorder.grades.append(grade)
        self._recorder.outputs.append(text)
        if not grade.passed:
            probe = CaseResult(
                "",
                self._recorder.name,
                output=text,
                reason=grade.reason,
                score=grade.score,
                assertions=[o.to_dict() for o in grade.outcomes],
            )
            message = describe_case(probe, self._recorder.last_prompt)
            if self._gates_text:
                tolerate(self._gates_text, grade.reason)
            raise CheckFailed(message)
        return grade


def _as_assertion(value: Any) -> Assertion:
    """An assertion, an MLflow scorer given as itself (`prompt_check(answer, Guidelines(...))`), or a
    check function (`prompt_check(answer, my_metric)`, as `python(my_metric)`)."""
    if isinstance(value, Assertion):
        return value
    from .assertions.mlflow_scorers import is_scorer, mlflow_scorer

    if is_scorer(value):
        return mlflow_scorer(value)
    if callable(value):
        # a check function, e.g. a DSPy metric `(example, prediction, trace=None)`: the `python` assertion
        from .assertions.builders import python

        return python(value)
    raise AssertionConfigError(
        f"prompt_check takes assertions (contains('x'), llm_rubric('...'), ...), MLflow scorers or check functions, not {type(value).__name__}"
    )


def python_suite(item: pytest.Item, marker: pytest.Mark | None) -> SuiteInfo:
    """The suite a Python prompt test belongs to: the marker's `suite=`, else its module."""
    from .gates import parse_gates

    kwargs = dict(marker.kwargs) if marker else {}
    module = item.nodeid.split("::", 1)[0]
    name = str(kwargs.get("suite") or module)
    try:
        gates = parse_gates(kwargs.get("gates"), f"@pytest.mark.promptopt(gates=...) on {item.nodeid}")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return SuiteInfo(id=name, name=name, file=module, gates=gates, kind="python")


_recorder_key = pytest.StashKey["PythonCaseRecorder"]()


def item_recorder(item: pytest.Item) -> PythonCaseRecorder:
    """The Python prompt test's recorder, made at its first fixture of the plugin (or at its
    first report, for a test whose fixtures never ran or that uses none: it is counted all the
    same), kept on the item."""
    recorder = item.stash.get(_recorder_key, None)
    if recorder is None:
        callspec = getattr(item, "callspec", None)
        params = dict(callspec.params) if callspec is not None else {}
        recorder = PythonCaseRecorder(
            suite=python_suite(item, item.get_closest_marker("promptopt")),
            nodeid=item.nodeid,
            name=item.name,
            vars=params,
            base_dir=item.path.parent,
            repeat=params.pop(REPEAT_FIXTURE, 0),  # a sample, not a template var
        )
        item.stash[_recorder_key] = recorder
    return recorder


def has_recorder(item: pytest.Item) -> bool:
    return _recorder_key in item.stash


def check_python_suites(items: Sequence[pytest.Item]) -> None:
    """Python tests that share a `suite=` must agree on its gates: one suite, one verdict."""
    first: dict[str, tuple[str, Any]] = {}
    for item in items:
        marker = item.get_closest_marker("promptopt")
        if not isinstance(item, pytest.Function) or marker is None or "suite" not in marker.kwargs:
            continue
        suite = python_suite(item, marker)
        seen = first.setdefault(suite.id, (item.nodeid, suite.gates))
        if seen[1] != suite.gates:

            def shown(gates: Any) -> str:
                return ", ".join(g.describe() for g in gates) or "no gates"

            raise pytest.UsageError(
                f"suite '{suite.id}': {seen[0]} declares {shown(seen[1])} but {item.nodeid} declares "
                f"{shown(suite.gates)}; give every test of a suite the same gates (e.g. a module-level pytestmark)"
            )


def python_case_key(item: pytest.Item) -> tuple[str, str]:
    """(suite id, case id) of a Python prompt test's item: the case its samples, if repeated, make."""
    split = split_repeat(item.nodeid)
    return python_suite(item, item.get_closest_marker("promptopt")).id, python_case_id(
        split[0] if split else item.nodeid
    )


def python_repeats(marker: pytest.Mark | None, repeats: Repeats, nodeid: str) -> int:
    """A Python prompt test's samples: the marker's `repeat=` plays a suite's `repeat:`
    (--promptopt-repeat on the command line beats it, it beats the ini value)."""
    value = marker.kwargs.get("repeat") if marker else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise pytest.UsageError(
            f"@pytest.mark.promptopt(repeat=...) on {nodeid}: give a whole number of samples, 1 or more, got {value!r}"
        )
    return repeats.for_suite(value)


def python_model_spec(
    marker: pytest.Mark | None, default: ModelSpec, nodeid: str, session: PromptoptSession
) -> ModelSpec:
    """The marker's `model=` (an id string, provider mapping or a model object), else the default."""
    model = marker.kwargs.get("model") if marker else None
    if model is None:
        return default
    if hasattr(model, "generate") and hasattr(model, "cache_identity"):
        return session.adopt_model(model)
    where = f"@pytest.mark.promptopt(model=...) on {nodeid}"
    try:
        spec = parse_model_spec(model, where)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if spec.transform is not None:
        # A suite runs a provider's transform on each answer; a Python test holds its answer
        # itself, so one here would be silently ignored.
        raise pytest.UsageError(
            f"{where}: a provider's transform runs on suite cases only; in a Python test, transform the "
            "answer in the test before checking it"
        )
    return spec
