"""Grade one output against a case's assertions and combine them as promptfoo does."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..prompt import TemplateError, render_template
from ..sandbox import ScriptFault, sandbox_for
from ..sandbox.scripts import run_transform
from .base import (
    Assertion,
    AssertionConfigError,
    AssertionContext,
    AssertionEvaluationError,
    Grade,
    entry_for,
    register,
)

ASSERT_SET = "assert-set"


@dataclass(frozen=True)
class Outcome:
    """One assertion's verdict on one output, as it appears in reports."""

    type: str
    value: Any
    passed: bool
    score: float
    reason: str
    weight: float = 1.0
    threshold: float | None = None
    metric: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "value": self.value,
            "passed": self.passed,
            "score": self.score,
            "reason": self.reason,
            "weight": self.weight,
            "threshold": self.threshold,
            "metric": self.metric,
        }


@dataclass(frozen=True)
class CaseGrade:
    passed: bool
    score: float
    reason: str
    outcomes: tuple[Outcome, ...] = ()
    named_scores: Mapping[str, float] = field(default_factory=dict)
    # The weight behind each named score (promptfoo's namedScoreWeights): how much an
    # `assert-set`'s metrics count in the case that holds it.
    named_weights: Mapping[str, float] = field(default_factory=dict)


@register(ASSERT_SET, needs_value=False, render_value=False)
def _assert_set(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    """promptfoo's `assert-set` alone, as `grade_assertion` would see it; `grade_case` grades a
    set inside a case itself, so its checks are reported and weighed as promptfoo does."""
    grade = grade_case(output, assertion.children, ctx, assertion.threshold)
    return Grade(grade.passed, grade.score, grade.reason, grade.named_scores)


def render_assertion(assertion: Assertion, variables: Mapping[str, Any], promptfoo: bool = False) -> Assertion:
    """Render a string value with the case's vars (promptfoo does, except for code references);
    `promptfoo`: with a suite file's template manners (nunjucks.py)."""
    entry = entry_for(assertion.type)
    if entry.needs_value and assertion.value is None:
        raise AssertionConfigError(f"{assertion.where or assertion.type}: '{assertion.label}' needs a 'value'")
    value = assertion.value
    if entry.render_value:
        try:
            value = _render_strings(value, variables, promptfoo)
        except TemplateError as exc:
            raise AssertionConfigError(f"{assertion.where or assertion.type}: value {exc}") from None
    children = tuple(render_assertion(child, variables, promptfoo) for child in assertion.children)
    rendered = replace(assertion, value=value, children=children)
    if entry.check is not None:
        entry.check(rendered)
    return rendered


def _render_strings(value: Any, variables: Mapping[str, Any], promptfoo: bool = False) -> Any:
    if isinstance(value, str):
        return render_template(value, variables, promptfoo=promptfoo) if ("{{" in value or "{%" in value) else value
    if isinstance(value, list):
        return [_render_strings(v, variables, promptfoo) for v in value]
    return value


def _shown(value: Any) -> str:
    if value is None or callable(value):
        return ""
    return " " + json.dumps(value, ensure_ascii=False)[:200]


def grade_assertion(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    """Grade one (already rendered) assertion; `not-` inverts the verdict and the score."""
    entry = entry_for(assertion.type)
    if assertion.transform:
        output, ctx = _assertion_transform(output, assertion, ctx)
    grade = entry.grader(output, assertion, ctx)
    scores = [grade.score, *grade.named_scores.values()]
    if not all(math.isfinite(v) for v in scores):
        # Scores are not clipped (promptfoo sums them as given), so one that is no number at all
        # (a code check's NaN or infinity) would reach the case score, the metrics and the gates:
        # the check fails instead, as promptfoo fails a Python check whose JSON holds NaN.
        return Grade(False, 0.0, f"{assertion.type} gave a score that is not a finite number: {scores}")
    if not assertion.inverse or entry.inverse_aware:
        return grade
    passed = not grade.passed
    reason = (
        "Assertion passed" if passed else f"Expected output not to satisfy {assertion.type}{_shown(assertion.value)}"
    )
    # promptfoo keeps a python check's own score under `not-` and flips only the verdict.
    score = grade.score if assertion.type == "python" else 1.0 - grade.score
    return Grade(passed, score, reason)


def _assertion_transform(output: str, assertion: Assertion, ctx: AssertionContext) -> tuple[str, AssertionContext]:
    """promptfoo's assertion-level `transform`: what this assertion alone sees. Its context is
    `{vars, prompt: {label: <rendered prompt>}}`; a failure is an error of the case."""
    value = output if ctx.output_value is None else ctx.output_value
    context = {"vars": dict(ctx.vars), "prompt": {"label": ctx.prompt}, "metadata": {}}
    what = f"transform of {assertion.located}"
    try:
        with sandbox_for(ctx.sandbox) as sandbox:
            value = run_transform(
                sandbox, str(assertion.transform), value, context, ctx.base_dir, ctx.script_timeout_s, what
            )
    except ScriptFault as exc:
        raise AssertionEvaluationError(str(exc)) from None
    if isinstance(value, str):
        return value, replace(ctx, output_value=None)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")), replace(ctx, output_value=value)


def grade_case(
    output: str,
    assertions: Iterable[Assertion],
    ctx: AssertionContext,
    threshold: float | None = None,
) -> CaseGrade:
    """Combine assertion grades: weighted mean score; a case `threshold` overrides pass/fail.

    As in promptfoo, every assertion counts towards the weighted score; the case passes when
    every assertion passes, or, when the case sets `threshold`, when the weighted score reaches it.
    A weight-0 assertion is reported but decides nothing. An `assert-set` is graded the same way
    over its own checks with its own `threshold` (promptfoo's runAssertions), and counts as one
    check of the case; it is reported before its checks, as promptfoo lists them.
    """
    outcomes: list[Outcome] = []
    total = weight_sum = 0.0
    failure = ""
    metric_totals: dict[str, list[float]] = {}

    def add(name: str, value: float, weight: float) -> None:
        sums = metric_totals.setdefault(name, [0.0, 0.0])
        sums[0] += value * weight
        sums[1] += weight

    for assertion in assertions:
        if assertion.type == ASSERT_SET:
            group = grade_case(output, assertion.children, ctx, assertion.threshold)
            grade = Grade(group.passed, group.score, group.reason, group.named_scores)
            # promptfoo runs the set's checks through runAssertion (a weight-0 one passes) but
            # not the set itself: a set of weight 0 still decides.
            passed = group.passed
        else:
            group = None
            grade = grade_assertion(output, assertion, ctx)
            # promptfoo forces a weight-0 assertion to pass: it is reported and decides nothing.
            passed = grade.passed or assertion.weight == 0
        # Not clamped: a code check's score of 482 or -2 counts as written, as in promptfoo's
        # AssertionsResult (so a case `threshold` and the named metrics see the same sums).
        score = float(grade.score)
        outcomes.append(
            Outcome(
                assertion.label,
                assertion.value,
                passed,
                score,
                grade.reason,
                assertion.weight,
                assertion.threshold,
                assertion.metric,
            )
        )
        if group is not None:
            outcomes.extend(group.outcomes)
        total += score * assertion.weight
        weight_sum += assertion.weight
        if assertion.metric:
            add(assertion.metric, score, assertion.weight)
        for name, value in grade.named_scores.items():  # promptfoo's AssertionsResult.addResult
            if name != assertion.metric:
                weights = group.named_weights if group is not None else {}
                add(name, float(value), weights.get(name, 1.0) * assertion.weight)
        if not passed:
            failure = grade.reason  # promptfoo reports the last failure
    if not outcomes:
        return CaseGrade(True, 1.0, "No assertions")
    score = total / weight_sum if weight_sum else 0.0
    passed = not failure
    reason = failure or "All assertions passed"
    if threshold is not None:
        passed = score >= threshold
        reason = (
            f"Aggregate score {score:.2f} >= threshold {threshold:g}"
            if passed
            else f"Aggregate score {score:.2f} < threshold {threshold:g}"
        )
    named = {name: (s / w if w else 0.0) for name, (s, w) in metric_totals.items()}
    weights = {name: w for name, (_, w) in metric_totals.items()}
    return CaseGrade(passed, score, reason, tuple(outcomes), named, weights)
