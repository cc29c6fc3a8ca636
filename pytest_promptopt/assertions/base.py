"""Assertion specs, grades and the registry that maps a type name to its grader."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models.base import Response

__all__ = [
    "Assertion",
    "AssertionConfigError",
    "AssertionContext",
    "AssertionEvaluationError",
    "Grade",
    "Grader",
    "assertion_types",
    "grader_for",
    "register",
    "suggest_type",
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
        return data


def _provider_dict(provider: Any) -> Any:
    """An assertion's judge as plain data, secrets masked (for case ids and reports)."""
    from ..redact import redact

    if isinstance(provider, (str, Mapping)):
        return redact(provider)
    if hasattr(provider, "to_dict"):
        return provider.to_dict()
    return {"object": str(getattr(provider, "name", "") or type(provider).__name__)}


@dataclass(frozen=True)
class Grade:
    """An assertion's verdict: pass/fail, a score in [0, 1] and why."""

    passed: bool
    score: float
    reason: str = ""

    @classmethod
    def binary(cls, passed: bool, failure: str) -> Grade:
        """A pass/fail check: score 1 or 0, promptfoo's "Assertion passed" reason on success."""
        return cls(passed, 1.0 if passed else 0.0, "Assertion passed" if passed else failure)


@dataclass(frozen=True)
class AssertionContext:
    """What an assertion may look at besides the output text."""

    vars: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = ""
    response: Response | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    # Calls judge models for model-graded assertions, counted for this case (a `judging.Judge`);
    # None: the session's judges, uncounted.
    judge: Any = None


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


_REGISTRY: dict[str, _Entry] = {}


def register(
    name: str,
    *,
    needs_value: bool = True,
    render_value: bool = True,
    check: Callable[[Assertion], None] | None = None,
) -> Callable[[Grader], Grader]:
    """Register a grader under an assertion type name (used by the built-in assertion modules)."""

    def decorate(grader: Grader) -> Grader:
        _REGISTRY[name] = _Entry(grader, needs_value, render_value, check)
        return grader

    return decorate


_builtins_loaded = False


def _load_builtins() -> None:
    # Imported for their @register side effects; kept out of module import time.
    global _builtins_loaded
    if not _builtins_loaded:
        from . import measures, mlflow_scorers, model_graded, python_ref, reference, similarity, structured, text  # noqa: F401

        _builtins_loaded = True


def assertion_types() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def suggest_type(name: str) -> str | None:
    base = name[4:] if name.startswith("not-") else name
    match = difflib.get_close_matches(base, assertion_types(), n=1, cutoff=0.5)
    if not match:
        return None
    return ("not-" if name.startswith("not-") else "") + match[0]


def entry_for(name: str) -> _Entry:
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        # A prefixed family such as `mlflow:<Scorer>` is registered under its prefix (`mlflow:`).
        prefix = name.split(":", 1)[0] + ":"
        if ":" in name and name.split(":", 1)[1] and prefix in _REGISTRY:
            return _REGISTRY[prefix]
        hint = suggest_type(name)
        did_you_mean = f"; did you mean '{hint}'?" if hint else ""
        raise AssertionConfigError(
            f"unknown assertion type '{name}'{did_you_mean} (supported: {', '.join(assertion_types())}, "
            "each also with a 'not-' prefix)"
        ) from None


def grader_for(name: str) -> Grader:
    return entry_for(name).grader
