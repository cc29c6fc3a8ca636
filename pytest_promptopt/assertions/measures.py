"""Measured assertions: levenshtein, word-count, length, latency, cost."""

from __future__ import annotations

from typing import Any

from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register

LEVENSHTEIN_DEFAULT_THRESHOLD = 5  # promptfoo's default maximum edit distance


def levenshtein_distance(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@register("levenshtein")
def levenshtein(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    threshold = assertion.threshold if assertion.threshold is not None else LEVENSHTEIN_DEFAULT_THRESHOLD
    distance = levenshtein_distance(output, str(assertion.value))
    return Grade.binary(
        distance <= threshold, f"Levenshtein distance {distance} is greater than threshold {threshold:g}"
    )


def _bounds(assertion: Assertion, what: str) -> tuple[float | None, float | None]:
    """A number (exact) or `{min, max}` (either may be omitted)."""
    value: Any = assertion.value
    where = assertion.where or assertion.type
    if isinstance(value, bool):
        raise AssertionConfigError(f"{where}: '{assertion.type}' needs a number or {{min, max}}")
    if isinstance(value, (int, float)):
        return float(value), float(value)
    if isinstance(value, dict) and set(value) <= {"min", "max"} and value:
        low, high = value.get("min"), value.get("max")
        for name, bound in (("min", low), ("max", high)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                raise AssertionConfigError(f"{where}: '{name}' must be a number of {what}")
        if low is not None and high is not None and low > high:
            raise AssertionConfigError(f"{where}: min ({low}) is greater than max ({high})")
        return (None if low is None else float(low)), (None if high is None else float(high))
    raise AssertionConfigError(
        f"{where}: '{assertion.type}' needs a number (exact count) or {{min: N, max: M}} of {what}"
    )


def _within(count: int, assertion: Assertion, what: str) -> Grade:
    low, high = _bounds(assertion, what)
    if low is not None and low == high:
        return Grade.binary(count == low, f"Expected exactly {low:g} {what}, got {count}")
    if low is not None and count < low:
        return Grade(False, 0.0, f"Expected at least {low:g} {what}, got {count}")
    if high is not None and count > high:
        return Grade(False, 0.0, f"Expected at most {high:g} {what}, got {count}")
    return Grade(True, 1.0, "Assertion passed")


@register("word-count", check=lambda a: None if _bounds(a, "words") else None)
def word_count(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    return _within(len(output.split()), assertion, "words")


@register("length", check=lambda a: None if _bounds(a, "characters") else None)
def length(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    return _within(len(output), assertion, "characters")


def _need_threshold(assertion: Assertion) -> None:
    if assertion.threshold is None:
        raise AssertionConfigError(f"{assertion.where or assertion.type}: '{assertion.type}' needs a 'threshold'")


@register("latency", needs_value=False, check=_need_threshold)
def latency(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    # A cached response keeps the latency measured when it was recorded, so replayed runs
    # judge the recorded call rather than failing (promptfoo refuses cached results instead).
    if ctx.response is None:
        raise AssertionEvaluationError("latency assertion needs a model response")
    ms = ctx.response.latency_ms
    threshold = float(assertion.threshold or 0)
    return Grade.binary(ms <= threshold, f"Latency {ms:.0f}ms is greater than threshold {threshold:g}ms")


@register("cost", needs_value=False, check=_need_threshold)
def cost(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    if ctx.response is None or ctx.response.cost is None:
        raise AssertionEvaluationError(
            "cost assertion: this provider does not report cost "
            f"({ctx.response.model if ctx.response else 'no response'})"
        )
    threshold = float(assertion.threshold or 0)
    spent = ctx.response.cost
    return Grade.binary(spent <= threshold, f"Cost {spent:.6g} is greater than threshold {threshold:g}")
