"""JSON assertions: is-json and contains-json, each with an optional JSON Schema as `value`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .base import Assertion, AssertionConfigError, AssertionContext, Grade, register


@functools.lru_cache(maxsize=256)
def _schema_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_schema(value: Any, base_dir: Path, where: str = "") -> dict[str, Any] | None:
    """A schema given inline (object, JSON/YAML text) or as `file://schema.json|yaml`."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        schema = value
    elif isinstance(value, str):
        text = value
        if value.startswith("file://"):
            path = (base_dir / value[len("file://") :]).resolve()
            try:
                text = _schema_file(str(path))
            except OSError as exc:
                raise AssertionConfigError(f"{where}: cannot read JSON Schema file {path}: {exc.strerror}") from None
        import yaml  # JSON is YAML; promptfoo accepts either

        try:
            schema = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AssertionConfigError(f"{where}: JSON Schema does not parse: {exc}") from None
    else:
        raise AssertionConfigError(f"{where}: the value must be a JSON Schema (an object or a file:// path)")
    if not isinstance(schema, dict):
        raise AssertionConfigError(f"{where}: the JSON Schema must be an object")
    _validator_for(json.dumps(schema, sort_keys=True), where)
    return schema


@functools.lru_cache(maxsize=256)
def _validator_for(schema_json: str, where: str = "") -> Any:
    from jsonschema import exceptions, validators

    schema = json.loads(schema_json)
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise AssertionConfigError(f"{where}: invalid JSON Schema: {exc.message}") from None
    return cls(schema)


def _schema_errors(data: Any, schema: dict[str, Any]) -> list[str]:
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    errors = []
    for error in validator.iter_errors(data):
        location = "/".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{location}: {error.message}")
    return errors


def extract_json_values(text: str) -> list[Any]:
    """Every JSON object embedded in `text`, left to right (what promptfoo's contains-json finds)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    index = text.find("{")
    while index != -1:
        try:
            value, end = decoder.raw_decode(text, index)
        except ValueError:
            index = text.find("{", index + 1)
            continue
        found.append(value)
        index = text.find("{", end)
    return found


def _check(assertion: Assertion) -> None:
    if isinstance(assertion.value, dict):
        load_schema(assertion.value, Path.cwd(), assertion.where)


@register("is-json", needs_value=False, check=_check)
def is_json(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    try:
        data = json.loads(output)
    except ValueError:
        return Grade(False, 0.0, "Expected output to be valid JSON")
    schema = load_schema(assertion.value, ctx.base_dir, assertion.where)
    if schema is not None:
        errors = _schema_errors(data, schema)
        if errors:
            return Grade(False, 0.0, "JSON does not conform to the provided schema. Errors: " + "; ".join(errors))
    return Grade(True, 1.0, "Assertion passed")


@register("contains-json", needs_value=False, check=_check)
def contains_json(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    values = extract_json_values(output)
    if not values:
        return Grade(False, 0.0, "Expected output to contain valid JSON")
    schema = load_schema(assertion.value, ctx.base_dir, assertion.where)
    if schema is None:
        return Grade(True, 1.0, "Assertion passed")
    errors: list[str] = []
    for value in values:
        problems = _schema_errors(value, schema)
        if not problems:
            return Grade(True, 1.0, "Assertion passed")
        errors.extend(problems)
    return Grade(False, 0.0, "JSON does not conform to the provided schema. Errors: " + "; ".join(errors))
