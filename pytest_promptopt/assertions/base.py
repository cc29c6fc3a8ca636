"""Assertion specs, grades and the registry that maps a type name to its grader.

The built-in graders register themselves when their modules are imported, which the package's
`__init__` does: this module imports none of them.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..models.base import Model, Request, Response
from ..models.specs import ModelSpec, model_name
from ..redact import redact
from ..sandbox import DEFAULT_SCRIPT_TIMEOUT_S, Sandbox

if TYPE_CHECKING:
    from ..cache import ResponseCache

__all__ = [
    "Assertion",
    "AssertionConfigError",
    "AssertionContext",
    "AssertionEvaluationError",
    "AssertionJudge",
    "Grade",
    "Grader",
    "assertion_types",
    "entry_for",
    "grader_for",
    "is_model_graded",
    "judge_calls_for",
    "register",
    "suggest_type",
    "walk",
]


class AssertionConfigError(ValueError):
    """An assertion is written wrongly (unknown type, bad value); found before any model call."""


class AssertionEvaluationError(RuntimeError):
    """An assertion could not be evaluated (a `python` check raised, cost not reported, ...).

    The case is reported as an error, not as a failure: nothing was learnt about the output.
    """


@dataclass(frozen=True)
class Assertion:
    """One check on a model output, as written in a suite (`type`, `value`, `threshold`, ...).

    The same object comes from YAML (`{"type": "not-contains", "value": "x"}`) and from the
    Python helpers (`not_(contains("x"))`).
    """

    type: str
    value: Any = None
    threshold: float | None = None
    weight: float = 1.0
    metric: str | None = None
    inverse: bool = False
    config: Mapping[str, Any] | None = None
    where: str = ""
    # The judge of a model-graded assertion: a provider id or `{id, config}` (a `ModelSpec` or a
    # model object in Python); None: the run's judge model (judging.py).
    provider: Any = None
    # promptfoo's assertion-level `transform`: JavaScript (inline or file://) or a Python file run on
    # the output before this assertion sees it; `contextTransform` likewise for context-* types.
    transform: str | None = None
    context_transform: str | None = None
    place: str = ""  # `file:line` of the assertion in its suite, for messages about running its code
    # promptfoo's `assert-set`: the checks it groups (graded together, scoring.grade_case); empty
    # for every other type.
    children: tuple[Assertion, ...] = ()

    @property
    def label(self) -> str:
        return ("not-" if self.inverse else "") + self.type

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.label}
        if self.value is not None:
            data["value"] = self.value
        for key in ("threshold", "metric", "config"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.weight != 1.0:
            data["weight"] = self.weight
        if self.provider is not None:
            data["provider"] = _provider_dict(self.provider)
        if self.transform is not None:
            data["transform"] = self.transform
        if self.context_transform is not None:
            data["contextTransform"] = self.context_transform
        if self.children:
            data["assert"] = [child.to_dict() for child in self.children]
        return data

    @property
    def located(self) -> str:
        """Where the assertion is written: `file:line: tests[0].assert[1]` (or what is known of it)."""
        return ": ".join(p for p in (self.place, self.where) if p) or self.label


def _provider_dict(provider: Any) -> Any:
    """An assertion's judge as plain data, secrets masked (for case ids and reports)."""
    if isinstance(provider, (str, Mapping)):
        return redact(provider)
    if hasattr(provider, "to_dict"):
        return provider.to_dict()
    return {"object": model_name(provider)}


@dataclass(frozen=True)
class Grade:
    """An assertion's verdict: pass/fail, a score (mostly in [0, 1]; a code check may give any finite number) and why."""

    passed: bool
    score: float
    reason: str = ""
    # Scores a check returned for named metrics (a JavaScript/Python GradingResult's namedScores).
    named_scores: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def binary(cls, passed: bool, failure: str) -> Grade:
        """A pass/fail check: score 1 or 0, promptfoo's "Assertion passed" reason on success."""
        return cls(passed, 1.0 if passed else 0.0, "Assertion passed" if passed else failure)


class AssertionJudge(Protocol):
    """What a grader asks of the judge in its context (`judging.Judge` is one): the run's judge
    model, the adapter a `provider` names, and its answers through the response cache."""

    @property
    def default(self) -> ModelSpec: ...

    def model(self, provider: Any = None) -> Model: ...

    def fetch(self, model: Any, request: Request) -> Response: ...


@dataclass(frozen=True)
class AssertionContext:
    """What an assertion may look at besides the output text, and the services it may use."""

    vars: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = ""
    response: Response | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    # Calls judge models for model-graded assertions, counted for this case; None: no judge model
    # here, and a model-graded assertion is an evaluation error.
    judge: AssertionJudge | None = None
    # Where `similar` keeps its sentence embeddings (the run's response cache); None: not kept.
    embeddings: ResponseCache | None = None
    # Runs user code (javascript/python checks, assertion transforms); None: a fresh one per call.
    sandbox: Sandbox | None = None
    script_timeout_s: float = DEFAULT_SCRIPT_TIMEOUT_S  # one call of user code (--promptopt-script-timeout)
    # The output after the test's transform when it is not text (an object): what code checks see;
    # the graders' `output` is then its JSON.
    output_value: Any = None
    # promptfoo's context.test and context.provider for code checks (the case's test and model).
    test: Mapping[str, Any] = field(default_factory=dict)
    provider: Mapping[str, Any] = field(default_factory=dict)


# A grader sees the output, the assertion (with `value` already rendered with the case vars) and
# the context, and grades the *positive* form; the registry applies `not-`.
Grader = Callable[[str, Assertion, AssertionContext], Grade]


@dataclass(frozen=True)
class _Entry:
    grader: Grader
    needs_value: bool
    # promptfoo renders string values with the case vars for most types, not for code references.
    render_value: bool
    check: Callable[[Assertion], None] | None
    # The most judge calls grading one answer may make (every one a cache miss).
    judge_calls: int = 0
    # Graded by a judge model through `ctx.judge`: its `provider` names that model, and a test's
    # `options.provider` applies to it.
    model_graded: bool = False
    # The grader applies `not-` itself (promptfoo's code checks keep their score when inverted).
    inverse_aware: bool = False


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    needs_value: bool = True,
    render_value: bool = True,
    check: Callable[[Assertion], None] | None = None,
    judge_calls: int = 0,
    model_graded: bool = False,
    inverse_aware: bool = False,
) -> Callable[[Grader], Grader]:
    """Register a grader under an assertion type name (used by the built-in assertion modules).
    A name ending in `:` registers a family (`mlflow:` grades every `mlflow:<name>`)."""

    def decorate(grader: Grader) -> Grader:
        _REGISTRY[name] = _Entry(grader, needs_value, render_value, check, judge_calls, model_graded, inverse_aware)
        return grader

    return decorate


def assertion_types() -> list[str]:
    return sorted(_REGISTRY)


def suggest_type(name: str) -> str | None:
    base = name[4:] if name.startswith("not-") else name
    match = difflib.get_close_matches(base, assertion_types(), n=1, cutoff=0.5)
    if not match:
        return None
    return ("not-" if name.startswith("not-") else "") + match[0]


def _lookup(name: str) -> _Entry | None:
    entry = _REGISTRY.get(name)
    if entry is None:
        # A prefixed family such as `mlflow:<Scorer>` is registered under its prefix (`mlflow:`).
        family, colon, rest = name.partition(":")
        if colon and rest:
            entry = _REGISTRY.get(family + ":")
    return entry


def entry_for(name: str) -> _Entry:
    entry = _lookup(name)
    if entry is None:
        hint = suggest_type(name)
        did_you_mean = f"; did you mean '{hint}'?" if hint else ""
        raise AssertionConfigError(
            f"unknown assertion type '{name}'{did_you_mean} (supported: {', '.join(assertion_types())}, "
            "each also with a 'not-' prefix)"
        )
    return entry


def judge_calls_for(kind: str) -> int:
    """The most judge calls grading one answer against an assertion of type `kind` may make
    (0 for an unknown type)."""
    entry = _lookup(kind)
    return entry.judge_calls if entry is not None else 0


def walk(assertions: Iterable[Any]) -> Iterator[Any]:
    """Every assertion with the checks an `assert-set` groups, depth first (the set before its
    own), for what counts each check once: judge calls, judge models, metric names."""
    for assertion in assertions:
        yield assertion
        yield from walk(getattr(assertion, "children", ()))


def is_model_graded(kind: str) -> bool:
    """Whether a judge model grades assertions of type `kind` (`llm-rubric`, `g-eval`, ...)."""
    entry = _lookup(kind)
    return entry is not None and entry.model_graded


def grader_for(name: str) -> Grader:
    return entry_for(name).grader
