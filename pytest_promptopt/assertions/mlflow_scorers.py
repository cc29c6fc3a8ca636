"""`mlflow:<scorer>` assertions: MLflow GenAI scorers (`mlflow.genai.scorers`) as assertions.

- `type: mlflow:Guidelines` (any class in `mlflow.genai.scorers`: Correctness, Guidelines,
  RelevanceToQuery, Safety, ...), built with `config` as its arguments;
- `type: mlflow:file://scorers.py:is_concise` or `mlflow:my_pkg.scorers:is_concise`: a
  `@scorer` function (or a `Scorer` instance or subclass) in a file or module;
- in Python, the scorer object itself: `mlflow_scorer(Guidelines(...))`, or the object given
  straight to `prompt_check`.

The scorer is called as MLflow's evaluation harness would call it: `inputs` are the case's vars
plus `messages` (the rendered prompt as chat messages, which MLflow's judges show as the
request), `outputs` the model's output, `expectations` the assertion's `value` (a mapping as
it is; a string is `expected_response`, a list of strings `expected_facts`). The Feedback's
value becomes the score (yes/no and booleans 1/0, numbers as they are) and its rationale the
reason; a Feedback with an error, a scorer that raises, or a value that is no verdict makes the
case an error. MLflow's LLM judges are called through the response cache (keyed by the judge's
class, configuration and the three arguments); `@scorer` functions run every time.

mlflow is imported only when such an assertion runs.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from ..models.base import ModelError, Request, Response
from ..models.specs import provider_spec
from ..redact import is_secret_key, scrub
from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register
from .python_ref import resolve_function, split_reference

__all__ = ["PREFIX", "grade_feedback", "is_scorer", "mlflow_scorer"]

PREFIX = "mlflow:"
_BUILTIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_YES = {"yes", "y", "true", "pass", "passed"}
_NO = {"no", "n", "false", "fail", "failed"}


def is_scorer(value: Any) -> bool:
    """An MLflow `Scorer` instance (checked without importing mlflow)."""
    return not isinstance(value, type) and any(
        c.__name__ == "Scorer" and c.__module__.startswith("mlflow.genai") for c in type(value).__mro__
    )


def mlflow_scorer(
    scorer: Any,
    expectations: Any = None,
    *,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    provider: Any = None,
) -> Assertion:
    """An MLflow scorer object as an assertion: `mlflow_scorer(Guidelines(guidelines="..."))`.
    `expectations` as in YAML's `value`."""
    if not is_scorer(scorer):
        raise AssertionConfigError(
            f"mlflow_scorer() takes an mlflow.genai Scorer (a built-in judge or a @scorer function), "
            f"not {type(scorer).__name__}"
        )
    name = str(getattr(scorer, "name", "") or type(scorer).__name__)
    return Assertion(
        PREFIX + name,
        expectations,
        threshold,
        weight,
        metric,
        False,
        {"scorer": scorer},
        where=PREFIX + name,
        provider=provider,
    )


def _check(assertion: Assertion) -> None:
    where = assertion.where or assertion.type
    reference = assertion.type[len(PREFIX) :].strip()
    if not reference:
        raise AssertionConfigError(
            f"{where}: name the scorer, e.g. mlflow:Guidelines or mlflow:file://scorers.py:my_scorer"
        )
    if assertion.config is not None and not isinstance(assertion.config, Mapping):
        raise AssertionConfigError(f"{where}: config must be a mapping (the scorer's arguments)")
    if not _BUILTIN.match(reference) and "scorer" not in (assertion.config or {}):
        split_reference(reference, where)
    try:
        provider_spec(assertion.provider, f"{where}: provider")
    except ValueError as exc:
        raise AssertionConfigError(str(exc)) from None
    value = assertion.value
    if value is not None and not isinstance(value, (str, list, Mapping)):
        raise AssertionConfigError(
            f"{where}: value (the expectations) must be a mapping, a string (expected_response) "
            "or a list of strings (expected_facts)"
        )


def _mlflow() -> Any:
    # litellm (which MLflow's judges and telemetry load) must not download its price table.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import mlflow.genai.scorers as scorers
    except ImportError:
        raise AssertionEvaluationError(
            "mlflow: assertions need mlflow: pip install 'pytest-promptopt[mlflow]'"
        ) from None
    return scorers


def _builtin_names(scorers: Any) -> list[str]:
    return sorted(getattr(scorers, "_LAZY_IMPORTS", set()) - {"get_all_scorers"})


def _resolve(assertion: Assertion, ctx: AssertionContext) -> Any:
    """The scorer object of the assertion."""
    config = dict(assertion.config or {})
    given = config.pop("scorer", None)
    if given is not None:
        return given
    scorers = _mlflow()
    where = assertion.where or assertion.type
    reference = assertion.type[len(PREFIX) :].strip()
    if _BUILTIN.match(reference):
        found = getattr(scorers, reference, None) if reference in _builtin_names(scorers) else None
        if found is None:
            names = _builtin_names(scorers)
            hint = difflib.get_close_matches(reference, names, n=1)
            fix = f"did you mean 'mlflow:{hint[0]}'? " if hint else ""
            raise AssertionConfigError(
                f"{where}: mlflow.genai.scorers has no scorer {reference!r}; {fix}built-in scorers: "
                f"{', '.join(names)}; a custom one is mlflow:file://scorers.py:function"
            )
    else:
        found = resolve_function(reference, ctx.base_dir, where)
    if isinstance(found, type):
        if not issubclass(found, scorers.Scorer):
            raise AssertionConfigError(f"{where}: {reference} is not an MLflow Scorer")
        _default_model(found, config, assertion, ctx)
        try:
            return found(**config)
        except Exception as exc:  # pydantic's validation error names the bad argument
            raise AssertionConfigError(f"{where}: {found.__name__}({', '.join(config)}): {_one_line(exc)}") from None
    if is_scorer(found):
        return found
    if callable(found):
        return scorers.scorer(found)  # a plain function: MLflow's decorator reads its parameters
    raise AssertionConfigError(f"{where}: {reference} is not a scorer")


def _default_model(cls: Any, config: dict[str, Any], assertion: Assertion, ctx: AssertionContext) -> None:
    """An LLM judge without `config.model` gets the assertion's provider, else the run's judge
    model, when that is a hosted (litellm) model: `openai/gpt-4o-mini` -> `openai:/gpt-4o-mini`.
    Otherwise MLflow's own default applies."""
    if "model" in config or "model" not in getattr(cls, "model_fields", {}):
        return
    spec = provider_spec(assertion.provider)
    if spec is None and assertion.provider is None and ctx.judge is not None:
        spec = ctx.judge.default
    if spec is not None and "/" in spec.id and not spec.id.startswith("object:"):
        provider, _, name = spec.id.partition("/")
        config["model"] = f"{provider}:/{name}"


def _expectations(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list):
        return {"expected_facts": [str(v) for v in value]}
    return {"expected_response": str(value)}


def _inputs(ctx: AssertionContext) -> dict[str, Any]:
    messages = [dict(m) for m in Request.from_prompt(ctx.prompt).messages] if ctx.prompt else []
    return {"messages": messages, **(dict(ctx.vars) if isinstance(ctx.vars, Mapping) else {})}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return scrub(text[0] if text else type(exc).__name__)


# ----------------------------------------------------------------------------- feedback


def _verdict(value: Any, origin: str) -> tuple[bool | None, float]:
    """(pass verdict or None for a bare number, score) of a Feedback value."""
    if isinstance(value, bool):
        return value, 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        score = float(value)
        if math.isnan(score):
            raise AssertionEvaluationError(f"{origin} returned NaN")
        return None, score
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _YES:
            return True, 1.0
        if text in _NO:
            return False, 0.0
        try:
            return _verdict(float(text), origin)
        except ValueError:
            pass
    raise AssertionEvaluationError(f"{origin} returned {value!r}, which is not a verdict (yes/no, a bool or a number)")


def grade_feedback(result: Any, threshold: float | None, origin: str) -> Grade:
    """A scorer's result as a grade: `Feedback` (value + rationale), a list of them (all must
    pass; the score is their mean), or a bare bool, number or yes/no."""
    if isinstance(result, list):
        if not result:
            raise AssertionEvaluationError(f"{origin} returned no feedback")
        grades = [grade_feedback(item, threshold, origin) for item in result]
        passed = all(g.passed for g in grades)
        reasons = [g.reason for g in grades if not g.passed] or [g.reason for g in grades]
        return Grade(passed, sum(g.score for g in grades) / len(grades), " | ".join(r for r in reasons if r))
    if result is None:
        raise AssertionEvaluationError(f"{origin} returned no feedback")
    rationale = None
    if hasattr(result, "value") and hasattr(result, "rationale"):
        error = getattr(result, "error", None)
        if error:
            message = getattr(error, "error_message", None) or getattr(error, "error_code", None) or str(error)
            raise AssertionEvaluationError(f"{origin}: {scrub(str(message))}")
        rationale = result.rationale
        result = result.value
    verdict, score = _verdict(result, origin)
    if verdict is None:  # a bare score: as a `python` check's number
        passed = score >= threshold if threshold is not None else score > 0
    else:
        passed = verdict and (threshold is None or score >= threshold)
    reason = str(rationale).strip() if rationale else ""
    if not reason:
        reason = "Assertion passed" if passed else f"{origin} returned {result!r}"
    return Grade(passed, score, reason)


# ----------------------------------------------------------------------------- running


class _JudgeCall:
    """An MLflow LLM judge seen as a model, so its verdicts go through the response cache: the
    request is the judge's arguments; the answer, the Feedback as JSON. A Feedback with an error
    raises (and is not recorded)."""

    def __init__(self, scorer: Any, origin: str, identity: Mapping[str, Any]) -> None:
        self.scorer = scorer
        self.origin = origin
        self.name = origin
        self._identity = identity

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return self._identity

    def generate(self, request: Request) -> Response:
        arguments = json.loads(request.messages[-1]["content"])
        try:
            result = self.scorer.run(**arguments)
        except Exception as exc:
            raise ModelError(f"{self.origin} raised {type(exc).__name__}: {_one_line(exc)}") from None
        items = result if isinstance(result, list) else [result]
        data = []
        for item in items:
            if hasattr(item, "value") and hasattr(item, "rationale"):
                error = getattr(item, "error", None)
                if error:
                    message = getattr(error, "error_message", None) or getattr(error, "error_code", None) or str(error)
                    raise ModelError(f"{self.origin}: {scrub(str(message))}")
                data.append({"value": item.value, "rationale": item.rationale})
            else:
                data.append({"value": item, "rationale": None})
        text = json.dumps({"feedback": data, "list": isinstance(result, list)}, ensure_ascii=False, default=str)
        return Response(text=text, model=self.origin)


class _Feedback:
    def __init__(self, value: Any, rationale: Any) -> None:
        self.value, self.rationale, self.error = value, rationale, None


def _identity(scorer: Any) -> dict[str, Any] | None:
    """What changes an LLM judge's verdicts: its class and configuration (no headers, no secrets)."""
    try:
        # MLflow's Scorer.model_dump is its serialised form (class, version, fields)
        dumped = json.loads(json.dumps(scorer.model_dump(), default=str))
    except Exception:
        return None

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            # required_columns: a set dumped as a list, in an order that changes from process to process
            return {
                k: clean(v)
                for k, v in value.items()
                if not is_secret_key(str(k)) and k not in ("extra_headers", "required_columns")
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return {"mlflow_scorer": f"{type(scorer).__module__}.{type(scorer).__qualname__}", "config": clean(dumped)}


def _is_llm_judge(scorer: Any) -> bool:
    return any(c.__name__ == "Judge" and c.__module__.startswith("mlflow.genai.judges") for c in type(scorer).__mro__)


# One judge call: an LLM judge's (a code scorer makes none, but which is which is known only
# once the scorer is resolved). Not model-graded: MLflow's judges call their own models.
@register(PREFIX, needs_value=False, check=_check, judge_calls=1)
def mlflow_assertion(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    scorer = _resolve(assertion, ctx)
    origin = f"MLflow scorer {getattr(scorer, 'name', None) or type(scorer).__name__}"
    arguments = {"inputs": _inputs(ctx), "outputs": output, "expectations": _expectations(assertion.value)}
    identity = _identity(scorer) if _is_llm_judge(scorer) else None
    judge = ctx.judge
    # An LLM judge's verdicts go through the response cache when the context has a judge;
    # otherwise (and for code scorers) the scorer runs every time.
    if identity is not None and judge is not None:
        call = _JudgeCall(scorer, origin, identity)
        request = Request.from_prompt(json.dumps(arguments, ensure_ascii=False, sort_keys=True, default=str))
        try:
            answer = json.loads(judge.fetch(call, request).text)
        except ModelError as exc:
            raise AssertionEvaluationError(str(exc)) from None
        items = [_Feedback(f["value"], f["rationale"]) for f in answer["feedback"]]
        result: Any = items if answer.get("list") else items[0]
    else:
        _mlflow()
        try:
            result = scorer.run(**arguments, trace=None)
        except Exception as exc:
            raise AssertionEvaluationError(f"{origin} raised {type(exc).__name__}: {_one_line(exc)}") from exc
    return grade_feedback(result, assertion.threshold, origin)
