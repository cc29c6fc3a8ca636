"""JSON assertions: is-json and contains-json, each with an optional JSON Schema as `value`."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .. import yaml12
from ..nunjucks import js_number, js_string, json_parse
from .ajv_compile import meta_schema_problem, strict_mode_problem
from .base import Assertion, AssertionConfigError, AssertionContext, Grade, register


@functools.lru_cache(maxsize=256)
def _schema_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_schema(value: Any, base_dir: Path, where: str = "") -> dict[str, Any] | None:
    """A schema given inline (object, JSON/YAML text) or as `file://schema.json|yaml`; none for a
    value JavaScript holds false (`false`, `0`, `''`: promptfoo's `if (renderedValue)`)."""
    if value is None or value == "" or (isinstance(value, (bool, int, float)) and not value):
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
    """A draft-07 validator, as promptfoo's Ajv validates, whatever `$schema` says: Ajv refuses
    any other meta-schema when it compiles (`_check_compiles`), and one without `$schema` is
    draft-07 there, where jsonschema would take the latest draft."""
    from jsonschema import Draft7Validator, exceptions

    schema = {k: v for k, v in json.loads(schema_json).items() if k != "$schema"}
    try:
        Draft7Validator.check_schema(schema)
    except exceptions.SchemaError as exc:
        raise AssertionConfigError(f"{where}: invalid JSON Schema: {exc.message}") from None
    return Draft7Validator(schema)


def _check_compiles(schema: dict[str, Any], where: str) -> None:
    """Raise what promptfoo's Ajv throws when it compiles `schema`; it compiles it only once the
    output holds JSON, so a case whose output has none fails on that instead."""
    problem = meta_schema_problem(schema)
    if problem:
        raise AssertionConfigError(
            f"{where}: {problem} (promptfoo compiles the value with Ajv, which knows the draft-07 meta-schema "
            'only, so the case is an error there too; write "$schema": "http://json-schema.org/draft-07/schema#" '
            "or leave $schema out)"
        )
    problem = strict_mode_problem(schema)
    if problem:
        raise AssertionConfigError(
            f"{where}: {problem} (promptfoo compiles the value as a JSON Schema in Ajv's strict mode, so the "
            "case is an error there too; write a schema, e.g. {properties: {key: {const: value}}}, or set "
            "PROMPTFOO_DISABLE_AJV_STRICT_MODE=true)"
        )


def _schema_errors(data: Any, schema: dict[str, Any]) -> list[str]:
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    errors = []
    for error in validator.iter_errors(data):
        location = "/".join(str(p) for p in error.absolute_path) or "(root)"
        errors.append(f"{location}: {error.message}")
    return errors


_MAX_CANDIDATE = 100_000  # promptfoo's maxJsonLength
_MAX_NODES = 10_000  # a candidate whose YAML aliases expand further is not taken


def extract_json_values(text: str) -> list[Any]:
    """Every object promptfoo's contains-json finds in `text` (`extractJsonObjects`, 0.121.20):
    from each `{`, the text up to where the braces balance (or the end, missing `}` added) is
    read as YAML (so `{ok: yes}`, `{'a': 1}`, `{"a": NaN}` and trailing commas count), with
    `//` comments turned into `#`; arrays and bare scalars are never found."""
    found: list[Any] = []
    i = 0
    while i < len(text):
        if text[i] != "{":
            i += 1
            continue
        opened, closed, j = 1, 0, i + 1
        limit = min(i + _MAX_CANDIDATE, len(text))
        taken = False
        while j < limit and opened > closed:
            if text[j] == "{":
                opened += 1
            elif text[j] == "}":
                closed += 1
            j += 1
            if opened == closed or j == len(text) or j == i + _MAX_CANDIDATE:
                candidate = text[i:j] + "}" * max(0, opened - closed)
                parsed = _yaml_object(_slash_comments_to_hash(candidate))
                if parsed is not None:
                    found.append(parsed)
                    i, taken = j, True
                    break
                if opened == closed:
                    break
        if not taken:
            i += 1
    return found


def _yaml_object(text: str) -> Any:
    """`text` read as YAML (the suite's core schema) if it is a mapping, else None."""
    import yaml

    try:
        node, loader = yaml12.compose(text)
    except (yaml.YAMLError, RecursionError):
        return None
    try:
        if node is None or node.id != "mapping" or yaml12.expanded_sizes(node)[id(node)] > _MAX_NODES:
            loader.dispose()
            return None
        value = yaml12.construct(node, loader)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _slash_comments_to_hash(text: str) -> str:
    """promptfoo's `convertSlashCommentsToHash`: `// x` outside quotes (and not in a URL) -> `# x`."""
    lines = []
    for line in text.split("\n"):
        state, out, k = "normal", "", 0
        while k < len(line):
            char, nxt, prev = line[k], line[k + 1 : k + 2], line[k - 1 : k] if k else ""
            if state == "normal":
                if char == "'" and not prev.isalpha():
                    state = "single"
                elif char == '"':
                    state = "double"
                elif char == "/" and nxt == "/":
                    start = max((m for m in range(k) if line[m].isspace()), default=-1) + 1
                    if "://" in line[start : k + 2]:  # a URL: promptfoo keeps the line as it is from here
                        out += char
                        k += 1
                        continue
                    slashes = 2
                    while k + slashes < len(line) and line[k + slashes] == "/":
                        slashes += 1
                    out = out + "#" * (slashes // 2) + line[k + slashes :]
                    break
                out += char
            elif state == "single":
                out += char
                if char == "'" and not _escaped(line, k) and not nxt.isalpha():
                    state = "normal"
            else:  # double
                out += char
                if char == '"' and not _escaped(line, k):
                    state = "normal"
            k += 1
        lines.append(out)
    return "\n".join(lines)


def _escaped(line: str, index: int) -> bool:
    count, k = 0, index - 1
    while k >= 0 and line[k] == "\\":
        count, k = count + 1, k - 1
    return count % 2 == 1


def _check(assertion: Assertion) -> None:
    if isinstance(assertion.value, dict):
        load_schema(assertion.value, Path.cwd(), assertion.where)


@register("is-json", needs_value=False, check=_check)
def is_json(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    try:
        data = json_parse(output)  # JSON.parse: NaN and Infinity are not JSON
    except (ValueError, RecursionError):
        return Grade(False, 0.0, "Expected output to be valid JSON")
    schema = load_schema(assertion.value, ctx.base_dir, assertion.where)
    if schema is not None:
        _check_compiles(schema, assertion.where)
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
    _check_compiles(schema, assertion.where)
    errors: list[str] = []
    for value in values:
        problems = _schema_errors(value, schema)
        if not problems:
            return Grade(True, 1.0, "Assertion passed")
        errors.extend(problems)
    return Grade(False, 0.0, "JSON does not conform to the provided schema. Errors: " + "; ".join(errors))


def _tool_names(output: Any) -> set[str]:
    """The names of the tools an output calls, as promptfoo's `extractToolNames` finds them:
    OpenAI's `{tool_calls: [...]}`, Anthropic's `{type: tool_use, name}`, Google's `functionCall`
    and `toolCall.functionCalls`, a list of such blocks; text is read as JSON whole, else each line
    that starts with `{` or `[` (so plain prose calls nothing). JavaScript's `x && typeof x ===
    'object'` is any dict or list here (`{}` and `[]` included)."""
    if isinstance(output, str):
        try:
            return _tool_names(json_parse(output))
        except (ValueError, RecursionError):
            pass
        names: set[str] = set()
        for line in output.split("\n"):
            trimmed = line.strip().strip("\ufeff")  # JavaScript's trim() also drops a byte order mark
            if trimmed.startswith(("{", "[")):
                try:
                    names |= _tool_names(json_parse(trimmed))
                except (ValueError, RecursionError):
                    continue
        return names
    if isinstance(output, dict):
        return _object_tool_names(output)
    if isinstance(output, list):
        return set().union(*(_block_tool_name(block) for block in output if isinstance(block, dict)))
    return set()


def _name(holder: Any) -> set[str]:
    name = holder.get("name") if isinstance(holder, dict) else None
    return {name} if isinstance(name, str) else set()


def _object_tool_names(obj: dict[str, Any]) -> set[str]:
    if isinstance(obj.get("tool_calls"), list):
        calls = [call for call in obj["tool_calls"] if isinstance(call, dict)]
        return set().union(*(_name(call.get("function")) | _name(call) for call in calls))
    if obj.get("type") == "tool_use" and isinstance(obj.get("name"), str):
        return {obj["name"]}
    if isinstance(obj.get("functionCall"), (dict, list)):
        return _name(obj["functionCall"])
    call = obj.get("toolCall")
    if isinstance(call, (dict, list)):
        calls = call.get("functionCalls") if isinstance(call, dict) else None
        return set().union(*(_name(c) for c in calls)) if isinstance(calls, list) else set()
    return set()


def _block_tool_name(block: dict[str, Any]) -> set[str]:
    if block.get("type") == "tool_use" and isinstance(block.get("name"), str):
        return {block["name"]}
    for key in ("functionCall", "function"):
        if isinstance(block.get(key), (dict, list)):
            return _name(block[key])
    return _name(block)


def _tool_call_value(assertion: Assertion) -> None:
    """promptfoo's invariants: a list (not empty) or a string (split at commas) of tool names."""
    value = assertion.value
    if not isinstance(value, (list, str)) or value == []:
        raise AssertionConfigError(
            f"{assertion.where or assertion.type}: 'tool-call-f1' needs a value: a list of tool names or a "
            "comma-separated string (tool-call-f1 value: [search, book])"
        )


@register("tool-call-f1", check=_tool_call_value, inverse_aware=True)
def tool_call_f1(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    """promptfoo's `handleToolCallF1`: the F1 of the set of tools called against the expected set
    (order and repeats do not count), passing at `threshold` (default 1); `not-` flips only the
    verdict, the score stays the F1."""
    value = assertion.value
    # JavaScript's String(): true -> "true", null -> "null", 2.0 -> "2"
    expected = (
        {"null" if v is None else js_string(v) for v in value}
        if isinstance(value, list)
        else {s.strip() for s in str(value).split(",")}
    )
    actual = _tool_names(ctx.output_value if ctx.output_value is not None else output)
    both = len(expected & actual)
    precision = both / len(actual) if actual else 0.0
    recall = both / len(expected) if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    threshold = assertion.threshold if assertion.threshold is not None else 1.0
    passed = (f1 >= threshold) != assertion.inverse
    wanted, called = ", ".join(sorted(expected)), ", ".join(sorted(actual)) or "(none)"
    if passed:
        reason = f"Tool Call F1: {f1:.3f} (precision={precision:.3f}, recall={recall:.3f}). Expected: [{wanted}], Called: [{called}]"
    else:
        reason = (
            f"Tool Call F1 score {f1:.3f} is {'above' if assertion.inverse else 'below'} threshold {js_number(threshold)}. "
            f"Expected: [{wanted}], Called: [{called}]. Precision={precision:.3f}, Recall={recall:.3f}"
        )
    return Grade(passed, f1, reason)
