"""Python constructors for assertions: the YAML type names with `_` for `-`.

>>> contains("Paris")
Assertion(type='contains', value='Paris', ...)
>>> not_(regex(r"\\d"))            # the `not-` prefix
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

from .base import Assertion

__all__ = [
    "assertion",
    "contains",
    "contains_all",
    "contains_any",
    "contains_json",
    "cost",
    "equals",
    "icontains",
    "icontains_all",
    "icontains_any",
    "is_json",
    "latency",
    "length",
    "levenshtein",
    "not_",
    "python",
    "regex",
    "starts_with",
    "word_count",
]


def assertion(
    type: str,
    value: Any = None,
    *,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Assertion:
    """Any assertion by its YAML name, e.g. `assertion("not-icontains", "sorry")`."""
    inverse = type.startswith("not-")
    return Assertion(type[4:] if inverse else type, value, threshold, weight, metric, inverse, config, where=type)


def not_(a: Assertion) -> Assertion:
    """Invert an assertion, like the `not-` prefix in YAML."""
    return replace(a, inverse=not a.inverse)


def _simple(name: str) -> Callable[..., Assertion]:
    def build(value: Any, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
        return assertion(name, value, weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion."
    return build


equals = _simple("equals")
contains = _simple("contains")
icontains = _simple("icontains")
starts_with = _simple("starts-with")
regex = _simple("regex")


def _listed(name: str) -> Callable[..., Assertion]:
    def build(values: Sequence[str], *, weight: float = 1.0, metric: str | None = None) -> Assertion:
        return assertion(name, list(values), weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion (a list of strings)."
    return build


contains_any = _listed("contains-any")
contains_all = _listed("contains-all")
icontains_any = _listed("icontains-any")
icontains_all = _listed("icontains-all")


def is_json(schema: Mapping[str, Any] | str | None = None, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """Output is JSON (optionally valid against a JSON Schema: a dict or `file://schema.json`)."""
    return assertion("is-json", schema, weight=weight, metric=metric)


def contains_json(schema: Mapping[str, Any] | str | None = None, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """Output contains a JSON object (optionally valid against a JSON Schema)."""
    return assertion("contains-json", schema, weight=weight, metric=metric)


def levenshtein(value: str, threshold: float = 5, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """Edit distance to `value` at most `threshold` (promptfoo's default: 5)."""
    return assertion("levenshtein", value, threshold=threshold, weight=weight, metric=metric)


def _bounds(name: str) -> Callable[..., Assertion]:
    def build(exactly: int | None = None, *, min: int | None = None, max: int | None = None, weight: float = 1.0, metric: str | None = None) -> Assertion:
        value: Any = exactly if exactly is not None else {k: v for k, v in (("min", min), ("max", max)) if v is not None}
        return assertion(name, value, weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion: an exact count, or `min=`/`max=` bounds."
    return build


word_count = _bounds("word-count")
length = _bounds("length")


def latency(max_ms: float, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """The model answered within `max_ms` milliseconds."""
    return assertion("latency", threshold=max_ms, weight=weight, metric=metric)


def cost(max_cost: float, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """The call cost at most `max_cost` (for providers that report cost)."""
    return assertion("cost", threshold=max_cost, weight=weight, metric=metric)


def python(reference: str | Callable[..., Any], *, threshold: float | None = None, weight: float = 1.0, metric: str | None = None, config: Mapping[str, Any] | None = None) -> Assertion:
    """A user check: `"module:function"`, `"file://checks.py:function"`, or the function itself."""
    return assertion("python", reference, threshold=threshold, weight=weight, metric=metric, config=config)
