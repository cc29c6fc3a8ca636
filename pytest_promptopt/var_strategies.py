"""Hypothesis strategies of template variables: from a JSON Schema or from example vars (the engine
of `pytest_promptopt.strategies`, the public module, and of suites' `fuzz:` blocks).

This module imports Hypothesis; the plugin imports it only for suites with a `fuzz:` block.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from hypothesis import HealthCheck, Phase, settings
    from hypothesis import strategies as st
    from hypothesis.strategies import SearchStrategy
except ImportError as exc:  # pragma: no cover - hypothesis is in the `fuzz` and `test` extras
    raise ImportError(
        "pytest_promptopt.strategies (and suites' fuzz: blocks) need Hypothesis: pip install 'pytest-promptopt[fuzz]' (or pip install hypothesis)"
    ) from exc

__all__ = [
    "SchemaNotSupported",
    "from_schema",
    "prompt_settings",
    "vars_from_examples",
    "vars_from_schema",
]


# Text for prompts: any character except surrogates and control characters (the `whitespace`
# variant adds tabs and newlines on purpose).
# The text a generated string draws from: any unicode but surrogates and control characters.
CHARACTERS = st.characters(codec="utf-8", exclude_categories=("Cs", "Cc"))

_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "$schema",
    "$id",
    "deprecated",
    "readOnly",
    "writeOnly",
}
_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "boolean": set(),
    "null": set(),
    "array": {"items", "minItems", "maxItems", "uniqueItems"},
    "object": {"properties", "required", "additionalProperties"},
}


class SchemaNotSupported(ValueError):
    """A JSON Schema uses a keyword `from_schema` does not generate. `path` is where, inside the schema."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(f"{'.'.join(map(str, path))}: {message}" if path else message)
        self.message = message
        self.path = path


# ----------------------------------------------------------------------------- JSON Schema


def from_schema(schema: Mapping[str, Any] | bool) -> SearchStrategy[Any]:
    """Values valid against a JSON Schema, for the subset template variables need.

    `type` (one or a list of string, integer, number, boolean, null, array, object), `enum`,
    `const`, `anyOf`/`oneOf`; strings: `minLength`, `maxLength`, `pattern`; numbers: `minimum`,
    `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (`multipleOf` for integers); arrays:
    `items`, `minItems`, `maxItems`, `uniqueItems`; objects: `properties`, `required` (other
    properties are generated sometimes), `additionalProperties` (no extra keys are generated).
    A schema without `type` generates strings. Any other keyword (`format`, `$ref`, `allOf`,
    ...) raises `SchemaNotSupported` rather than generating values it does not describe.

    >>> from_schema({"type": "string", "maxLength": 5}).example()   # doctest: +SKIP
    'Ab'
    """
    return _from_schema(schema, ())


def vars_from_schema(schema: Mapping[str, Any]) -> SearchStrategy[dict[str, Any]]:
    """Template variables from a JSON Schema of the vars: an object schema whose `properties`
    are the variables (`required` ones always present, the others sometimes).

    >>> vars_from_schema({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    """
    if not isinstance(schema, Mapping) or schema.get("type", "object") != "object" or "properties" not in schema:
        raise SchemaNotSupported("a schema of template variables is an object schema with 'properties'")
    return _from_schema(schema, ())


def _from_schema(schema: Any, path: tuple[str | int, ...]) -> SearchStrategy[Any]:
    if schema is True or schema == {}:
        return st.text(CHARACTERS)
    if schema is False:
        raise SchemaNotSupported("the schema 'false' allows no value", path)
    if not isinstance(schema, Mapping):
        raise SchemaNotSupported(f"a schema is an object or a boolean, got {type(schema).__name__}", path)
    if "const" in schema or "enum" in schema:
        key = "const" if "const" in schema else "enum"
        listed = [schema["const"]] if key == "const" else list(schema["enum"])
        # Other keywords (a `type`, a `maxLength`) still apply: keep the listed values they allow.
        allowed = [v for v in listed if _one_of_validator(schema)(v)] if len(schema) > 1 else listed
        if not allowed:
            raise SchemaNotSupported(f"no value in '{key}' is valid against the rest of the schema", path + (key,))
        return st.sampled_from(allowed)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [
                _from_schema({**{k: v for k, v in schema.items() if k != key}, **option}, path + (key, n))
                for n, option in enumerate(schema[key])
            ]
            strategy = st.one_of(options)
            return strategy.filter(_one_of_validator(schema)) if key == "oneOf" else strategy
    kind = schema.get("type", "string")
    if isinstance(kind, list) and not kind:
        raise SchemaNotSupported("'type' is an empty list", path + ("type",))
    kinds = kind if isinstance(kind, list) else [kind]
    for name in kinds:
        if not isinstance(name, str) or name not in _KEYWORDS:
            raise SchemaNotSupported(f"type {name!r} is not a JSON Schema type", path + ("type",))
    known = set().union(*(_KEYWORDS[name] for name in kinds))
    unknown = sorted(set(schema) - _ANNOTATIONS - known - {"type"})
    if unknown:
        allowed = ", ".join(sorted(known | {"type", "enum", "const", "anyOf", "oneOf"}))
        raise SchemaNotSupported(
            f"'{unknown[0]}' is not generated for type {' or '.join(kinds)}; the keywords generated are: {allowed}",
            path + (unknown[0],),
        )
    if len(kinds) == 1:
        return _TYPES[kind if isinstance(kind, str) else kind[0]](schema, path)
    # Each type's own keywords apply to values of that type only.
    return st.one_of([_TYPES[name]({k: v for k, v in schema.items() if k in _KEYWORDS[name]}, path) for name in kinds])


def _one_of_validator(schema: Mapping[str, Any]) -> Callable[[Any], bool]:
    """Whether a value is valid against the whole schema (a generated `oneOf` alternative may
    match more than one; an `enum` value may break a sibling keyword)."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(dict(schema)).is_valid


def _string(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" not in schema:
        return st.text(CHARACTERS, min_size=low, max_size=high)
    try:
        pattern = re.compile(schema["pattern"])
    except re.error as exc:
        raise SchemaNotSupported(f"invalid regular expression: {exc}", path + ("pattern",)) from None
    # JSON Schema patterns match anywhere; generate whole matches, then keep those of the right length.
    strategy = st.from_regex(pattern, fullmatch=True, alphabet=CHARACTERS)
    return strategy.filter(lambda s: low <= len(s) <= (high if high is not None else math.inf))


def _integer(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[int]:
    lows = [math.ceil(schema["minimum"])] if "minimum" in schema else []
    lows += [math.floor(schema["exclusiveMinimum"]) + 1] if "exclusiveMinimum" in schema else []
    highs = [math.floor(schema["maximum"])] if "maximum" in schema else []
    highs += [math.ceil(schema["exclusiveMaximum"]) - 1] if "exclusiveMaximum" in schema else []
    low, high = max(lows, default=None), min(highs, default=None)
    step = schema.get("multipleOf", 1)
    if not isinstance(step, int) or step <= 0:
        raise SchemaNotSupported("'multipleOf' is generated for a positive integer only", path + ("multipleOf",))
    first = None if low is None else -(-low // step)
    last = None if high is None else high // step
    if first is not None and last is not None and first > last:
        raise SchemaNotSupported("no integer satisfies these bounds", path)
    return (
        st.integers(min_value=first, max_value=last).map(lambda n: n * step) if step != 1 else st.integers(first, last)
    )


def _number(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[float]:
    # The stricter of `minimum` and `exclusiveMinimum` binds (likewise for the maximum).
    low, exclude_low = schema.get("minimum"), False
    if "exclusiveMinimum" in schema and (low is None or schema["exclusiveMinimum"] >= low):
        low, exclude_low = schema["exclusiveMinimum"], True
    high, exclude_high = schema.get("maximum"), False
    if "exclusiveMaximum" in schema and (high is None or schema["exclusiveMaximum"] <= high):
        high, exclude_high = schema["exclusiveMaximum"], True
    return st.floats(
        min_value=low,
        max_value=high,
        allow_nan=False,
        allow_infinity=False,
        exclude_min=exclude_low and low is not None,
        exclude_max=exclude_high and high is not None,
    )


def _array(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[list[Any]]:
    items = _from_schema(schema.get("items", {"type": "string"}), path + ("items",))
    unique = schema.get("uniqueItems", False)
    return st.lists(
        items,
        min_size=schema.get("minItems", 0),
        max_size=schema.get("maxItems"),
        unique_by=(lambda v: vars_key(v)) if unique else None,
    )


def _object(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = list(schema.get("required", []))
    missing = [name for name in required if name not in properties]
    if missing:
        raise SchemaNotSupported(
            f"required property {missing[0]!r} has no schema in 'properties'", path + ("required",)
        )
    fields = {name: _from_schema(properties[name], path + ("properties", name)) for name in required}
    optional = {
        name: _from_schema(sub, path + ("properties", name)) for name, sub in properties.items() if name not in fields
    }
    return st.fixed_dictionaries(fields, optional=optional)


def _null(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[None]:
    return st.none()


def _boolean(schema: Mapping[str, Any], path: tuple[str | int, ...]) -> SearchStrategy[bool]:
    return st.booleans()


_TYPES: dict[str, Callable[[Mapping[str, Any], tuple[str | int, ...]], SearchStrategy[Any]]] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "null": _null,
    "array": _array,
    "object": _object,
}


def vars_key(value: Any) -> str:
    """A var set (or any JSON-like value) as canonical text: equal values, equal keys."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


# ----------------------------------------------------------------------------- examples


def vars_from_examples(
    examples: Sequence[Mapping[str, Any]], *, perturb: bool = True
) -> SearchStrategy[dict[str, Any]]:
    """Template variables built from example vars (a suite's tests): each variable takes one of
    the values it has in some example, chosen per variable, so values of different examples mix.
    With `perturb` (the default), a string value is sometimes edited: a word dropped, repeated or
    swapped, the text cut short, or spliced with another example's value. Every variable of any
    example is present. Shrinks towards the first example's values, unedited.

    >>> vars_from_examples([{"country": "France"}, {"country": "Japan"}])
    """
    if not examples:
        raise ValueError("vars_from_examples needs at least one example")
    values: dict[str, list[Any]] = {}
    for example in examples:
        for name, value in example.items():
            seen = values.setdefault(str(name), [])
            if all(vars_key(value) != vars_key(v) for v in seen):
                seen.append(value)
    fields = {name: _example_value(options, perturb) for name, options in values.items()}
    return st.fixed_dictionaries(fields)


def _example_value(options: list[Any], perturb: bool) -> SearchStrategy[Any]:
    texts = [v for v in options if isinstance(v, str)]

    @st.composite
    def value(draw: Callable[..., Any]) -> Any:
        chosen = draw(st.sampled_from(options))
        return _perturb(draw, chosen, texts) if perturb and isinstance(chosen, str) else chosen

    return value()


def _perturb(draw: Callable[..., Any], text: str, others: Sequence[str]) -> str:
    kind = draw(st.sampled_from(("none", "drop", "repeat", "swap", "cut", "splice")))  # shrinks towards "none"
    words = text.split(" ")
    at = draw(st.integers(0, max(0, len(words) - 1)))
    if kind == "drop" and len(words) > 1:
        return " ".join(words[:at] + words[at + 1 :])
    if kind == "repeat":
        return " ".join(words[: at + 1] + words[at:])
    if kind == "swap" and len(words) > 1:
        at = min(at, len(words) - 2)
        words[at], words[at + 1] = words[at + 1], words[at]
        return " ".join(words)
    if kind == "cut":
        return " ".join(words[:at])
    if kind == "splice":
        other = draw(st.sampled_from(list(others)))
        return text[: draw(st.integers(0, len(text)))] + other[draw(st.integers(0, len(other))) :]
    return text


# ----------------------------------------------------------------------------- adversarial variants


# ----------------------------------------------------------------------------- settings


def prompt_settings(**overrides: Any) -> settings:
    """Hypothesis settings for a prompt property test, usable as a decorator:
    deterministic (`derandomize=True`: the same examples on every run and machine, as CI needs),
    no example database (`database=None`: nothing stored between runs), no deadline (a model call
    takes as long as it takes), `max_examples=10` (each example is a model call, cached), no
    `explain` phase (it would run the failing example again under a tracer, calling the model
    more), and the health checks that do not apply here suppressed: `function_scoped_fixture` (the
    `prompt_model`/`prompt_check` fixtures are meant to be shared by all examples of one test),
    `too_slow` and `large_base_example` (`long` variants are large on purpose).
    Keyword arguments override any of these.

    >>> @prompt_settings(max_examples=20)
    ... @given(adversarial(st.sampled_from(["Paris", "Tokyo"])))
    ... def test_city(prompt_model, prompt_check, city): ...
    """
    values: dict[str, Any] = {
        "derandomize": True,
        "database": None,
        "deadline": None,
        "max_examples": 10,
        "phases": [Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
        "suppress_health_check": [
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.large_base_example,
        ],
    }
    values.update(overrides)
    return settings(**values)
