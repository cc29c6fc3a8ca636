"""The suite's JSON Schema (`schemas/suite.schema.json`) and its errors turned into `SuiteError`s that
name the file, line, path and fix; also used for tests read from CSV rows and JSONL lines.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from pathlib import Path
from typing import Any

from ..assertions.base import assertion_types
from .document import Context, LineMap
from .model import SuiteError

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "suite.schema.json"


@functools.lru_cache(maxsize=1)
def suite_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@functools.cache
def _validator(definition: str | None = None) -> Any:
    """A validator for the whole suite, or for one of its `$defs` (a test read from a CSV row or
    JSONL line): built once, since a tests file may hold thousands of rows."""
    from jsonschema import Draft202012Validator

    schema = suite_schema()
    if definition is not None:
        schema = {k: v for k, v in schema.items() if k not in ("properties", "additionalProperties", "type")}
        schema["$ref"] = f"#/$defs/{definition}"
    return Draft202012Validator(schema)


def validate_suite(data: dict[str, Any], ctx: Context) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(data))
    if error is not None:
        raise _schema_error(error, ctx)
    _refuse_non_finite(data, (), ctx)


_FINITE_KEYS = {"threshold", "weight", "min", "max", "repeat", "count", "seed", "limit"}


def _refuse_non_finite(data: Any, path: tuple[Any, ...], ctx: Context, origin: str = "") -> None:
    """A threshold, weight or gate of NaN or Infinity (`.nan`, `.inf` in YAML) passes a JSON
    Schema's `number`, but compares false with everything: refused, naming the field."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, path)]
    while stack:
        value, here = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, here + (str(k),)) for k, v in value.items() if str(k) not in ("vars", "value", "config"))
        elif isinstance(value, list):
            stack.extend((v, here + (i,)) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            named = [p for p in here if isinstance(p, str)]
            if (named and named[-1] in _FINITE_KEYS) or (named and named[0] == "gates"):
                where = f"{origin}: " if origin else ""
                raise ctx.error(here, f"{where}{value} is not a finite number; give a number such as 0.8")


def _schema_error(error: Any, ctx: Context) -> SuiteError:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unexpected = sorted(set(error.instance) - set(allowed), key=str)
        key = unexpected[0]  # a YAML key may be a number (`2: b`)
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        fix = f"did you mean '{hint[0]}'? " if hint else ""
        if not path:
            fix += "it is neither a promptfoo key nor one of this plugin's (see docs/suite-format.md). "
        return ctx.error(path + [key], f"unknown key '{key}'; {fix}allowed here: {', '.join(allowed)}")
    if path and path[-1] == "type" and "assert" in [p for p in path if isinstance(p, str)]:
        from ..assertions.base import suggest_type

        hint = suggest_type(str(error.instance))
        did_you_mean = f"did you mean '{hint}'? " if hint else ""
        return ctx.error(
            path,
            f"unknown assertion type {error.instance!r}; {did_you_mean}supported: {', '.join(assertion_types())} "
            "(each also with a 'not-' prefix)",
        )
    if error.validator in ("oneOf", "anyOf") and error.context:
        # Prefer the alternative whose own complaint is most specific.
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path):
            return _schema_error(deepest, ctx)
    return ctx.error(path, _describe(error))


def _describe(error: Any) -> str:
    if error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return (
            f"expected {expected}, got {type(error.instance).__name__} {json.dumps(error.instance, default=str)[:80]}"
        )
    if error.validator == "required":
        return error.message.replace("is a required property", "is required here")
    if error.validator == "oneOf":
        hints = {
            "prompts": "a prompt string, a file:// path, or a list of them (or {raw|id, label} objects)",
            "providers": "a model id string, a {id, config, label} object, a {<id>: {config, label}} mapping, or a list of them",
            "tests": "a list of test objects, or a file:// path to a CSV/JSONL/YAML/JSON file of tests",
            "defaultTest": "a test object (vars, assert, threshold, ...) or a file:// path",
            "vars": "a mapping of variable names to values, or a file:// path",
        }
        key = next((p for p in reversed(list(error.absolute_path)) if isinstance(p, str)), "")
        if key in hints:
            return f"expected {hints[key]}"
    return error.message


def validate_fragment(data: Any, definition: str, path: tuple[Any, ...], ctx: Context, origin: str = "") -> None:
    from jsonschema.exceptions import best_match

    error = best_match(_validator(definition).iter_errors(data))
    if error is not None:
        inner = _schema_error(error, Context(ctx.file, ctx.display, LineMap()))
        raise ctx.error(path, f"{origin + ': ' if origin else ''}{inner.path}: {inner.message}")
    _refuse_non_finite(data, path, ctx, origin)
