"""What Ajv refuses when it compiles a JSON Schema (promptfoo compiles is-json / contains-json
schemas with it).

promptfoo 0.121.20 compiles these schemas with `new Ajv({strictSchema: true})` (ajv 8.20, draft-07,
plus ajv-formats), so a schema with a keyword Ajv does not know, e.g. `{"is_even": true}` written
as if it were the expected JSON, throws "strict mode: unknown keyword" and the case is an error.
jsonschema ignores such keywords and the check would pass; `strict_mode_problem` finds what Ajv
throws for instead. Ajv compiles only the subschemas it reaches: unreferenced `definitions` are not
checked. `PROMPTFOO_DISABLE_AJV_STRICT_MODE` turns the strict checks off, as it does in promptfoo.

Ajv's default instance knows one meta-schema, draft-07: a schema whose `$schema` names another
(`https://json-schema.org/draft/2020-12/schema`, draft-04, `https://` for draft-07) is refused,
strict mode or not ("no schema with key or ref"), where jsonschema would pick that draft's
validator (`meta_schema_problem`; Ajv checks it first). Recorded with promptfoo 0.121.20 in
tests/data/promptfoo-format/json_schema_strict.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..env_flags import promptfoo_env_bool

__all__ = ["AJV_FORMATS", "AJV_KEYWORDS", "AJV_META_SCHEMAS", "meta_schema_problem", "strict_mode_problem"]

# Object.keys(new Ajv().RULES.keywords) after addFormats(ajv), ajv 8.20.0 / ajv-formats 3.
AJV_KEYWORDS = frozenset(
    {
        "$async", "$comment", "$defs", "$id", "$ref", "$schema", "$vocabulary", "additionalItems",
        "additionalProperties", "allOf", "anyOf", "const", "contains", "contentEncoding", "contentMediaType",
        "contentSchema", "default", "definitions", "dependencies", "deprecated", "description", "else", "enum",
        "examples", "exclusiveMaximum", "exclusiveMinimum", "format", "formatExclusiveMaximum",
        "formatExclusiveMinimum", "formatMaximum", "formatMinimum", "id", "if", "items", "maxItems", "maxLength",
        "maxProperties", "maximum", "minItems", "minLength", "minProperties", "minimum", "multipleOf", "not",
        "nullable", "oneOf", "pattern", "patternProperties", "properties", "propertyNames", "readOnly",
        "required", "then", "title", "type", "uniqueItems", "writeOnly",
    }
)  # fmt: skip
AJV_FORMATS = frozenset(
    {
        "binary", "byte", "date", "date-time", "double", "duration", "email", "float", "hostname", "int32",
        "int64", "ipv4", "ipv6", "iso-date-time", "iso-time", "json-pointer", "json-pointer-uri-fragment",
        "password", "regex", "relative-json-pointer", "time", "uri", "uri-reference", "uri-template", "url", "uuid",
    }
)  # fmt: skip
# The `$schema` values `new Ajv()` has a meta-schema for (one trailing `#` dropped, as Ajv's normalizeId does)
AJV_META_SCHEMAS = frozenset({"http://json-schema.org/draft-07/schema", "http://json-schema.org/schema"})
_ONE_SCHEMA = ("additionalProperties", "additionalItems", "contains", "propertyNames", "not", "if", "then", "else")
_SCHEMA_MAPS = ("properties", "patternProperties", "dependencies")
_SCHEMA_LISTS = ("allOf", "anyOf", "oneOf")


def meta_schema_problem(schema: Any) -> str | None:
    """Ajv's message when the meta-schema `schema` names (`$schema`) is not one it knows, or None.

    >>> meta_schema_problem({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    'no schema with key or ref "https://json-schema.org/draft/2020-12/schema"'
    """
    meta = schema.get("$schema") if isinstance(schema, dict) else None
    if meta is not None and not isinstance(meta, str):
        return "$schema must be a string"
    if meta and meta.removesuffix("#") not in AJV_META_SCHEMAS:
        return f'no schema with key or ref "{meta}"'
    return None


def strict_mode_problem(schema: Any) -> str | None:
    """Ajv's message for the first thing strict mode refuses in `schema`, or None.

    >>> strict_mode_problem({"is_even": True})
    'strict mode: unknown keyword: "is_even"'
    """
    if promptfoo_env_bool("PROMPTFOO_DISABLE_AJV_STRICT_MODE"):
        return None
    for node, path in _reached(schema, "#", schema, set()):
        problem = _node_problem(node, path)
        if problem:
            return problem
    return None


def _node_problem(node: dict[str, Any], path: str) -> str | None:
    # Ajv checks a schema's keywords before it compiles any of them, in the schema's key order.
    for key in node:
        if key not in AJV_KEYWORDS:
            return f'strict mode: unknown keyword: "{key}"'
    if "if" in node and "then" not in node and "else" not in node:
        return 'strict mode: "if" without "then" and "else" is ignored'
    for keyword in ("then", "else"):
        if keyword in node and "if" not in node:
            return f'strict mode: "{keyword}" without "if" is ignored'
    if "additionalItems" in node and not isinstance(node.get("items"), list):
        return 'strict mode: "additionalItems" is ignored when "items" is not an array of schemas'
    fmt = node.get("format")
    if isinstance(fmt, str) and fmt not in AJV_FORMATS:
        return f'unknown format "{fmt}" ignored in schema at path "{path}"'
    return None


def _reached(node: Any, path: str, root: Any, seen: set[int]) -> Iterator[tuple[dict[str, Any], str]]:
    """The schema objects Ajv compiles from `node`, with Ajv's path to each (`#/properties/a`):
    itself, its subschemas, and what `#/...` refs point at."""
    if not isinstance(node, dict) or id(node) in seen:
        return
    seen.add(id(node))
    yield node, path
    children: list[tuple[Any, str]] = [(node.get(key), f"{path}/{key}") for key in _ONE_SCHEMA]
    for key in _SCHEMA_MAPS:
        if isinstance(node.get(key), dict):
            children.extend((child, f"{path}/{key}/{name}") for name, child in node[key].items())
    for key in (*_SCHEMA_LISTS, "items"):
        if isinstance(node.get(key), list):
            children.extend((child, f"{path}/{key}/{i}") for i, child in enumerate(node[key]))
    if isinstance(node.get("items"), dict):
        children.append((node["items"], f"{path}/items"))
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        children.append((_pointer(root, ref[1:]), ref))
    for child, child_path in children:
        yield from _reached(child, child_path, root, seen)


def _pointer(root: Any, pointer: str) -> Any:
    """The part of `root` a JSON pointer (`/definitions/x`) names, or None."""
    node = root
    for part in [p for p in pointer.split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
