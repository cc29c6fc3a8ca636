"""Templates of suite files rendered as promptfoo renders them (Nunjucks in JavaScript), in
Jinja2's sandbox.

promptfoo's Nunjucks prints values as JavaScript does (`129.00` -> `129`, `true`, `null` -> ``,
a list -> `a,b`, an object -> `[object Object]`), renders an attribute that does not exist as
nothing, knows `.length`, and has the filters `dump` (compact `JSON.stringify`), `load`
(`JSON.parse`) and `nl2br`. This module gives Jinja2 those manners (`js_string` and friends), and
renders a suite's prompt the way promptfoo's `renderPrompt` does (`render_suite_prompt`):

1. `{{ name }}` inside a var's value is replaced by the other var's value (up to 5 passes);
2. a prompt that parses as JSON has each of its strings rendered and comes back as
   `JSON.stringify(value, null, 2)`;
3. otherwise each string var is itself rendered as a template (unless it names a variable the
   case lacks), and the prompt is rendered with those values. A prompt or var with an unclosed
   `{{`, `{%` or `{#` on one of its lines is not rendered at all.

Every template runs in the sandbox with a budget: `range()` may make 100,000 items per call and
1,000,000 per render, and a render may produce 10,000,000 characters. The `env` global holds
only the suite's `env:` mapping, never the process environment (secrets).
"""

from __future__ import annotations

import contextvars
import functools
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_OUTPUT",
    "MAX_RANGE_ITEMS",
    "budgeted_range",
    "environment",
    "js_json",
    "js_number",
    "js_string",
    "references_undefined",
    "resolve_variables",
    "wrap_partial",
]

MAX_RANGE_ITEMS = 1_000_000  # items all range() calls of one render may make
MAX_OUTPUT = 10_000_000  # characters one render may produce
_budget: contextvars.ContextVar[list[int]] = contextvars.ContextVar("promptopt_range_budget")


def js_number(value: float | int) -> str:
    """`Number.prototype.toString()`: `129.0` -> `129`, `5e-07` -> `5e-7`, `1e21` -> `1e+21`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) < 2**53:
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "Infinity" if number > 0 else "-Infinity"
    if number == 0:
        return "0"
    sign = "-" if number < 0 else ""
    digits_tuple, exponent = Decimal(repr(abs(number))).as_tuple()[1:]
    digits = "".join(map(str, digits_tuple)).rstrip("0") or "0"
    exponent += len("".join(map(str, digits_tuple))) - len(digits)
    k = len(digits)
    n = exponent + k  # the value is 0.<digits> x 10^n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + text


def js_string(value: Any) -> str:
    """`String(value)` in JavaScript, as Nunjucks prints a value."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return js_number(value)
    if isinstance(value, (list, tuple)):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def js_json(value: Any, indent: int | str | None = None, _level: int = 0) -> str:
    """`JSON.stringify(value, null, indent)`: numbers as JavaScript prints them, NaN and
    Infinity as `null`, no spaces without an indent."""
    pad = (" " * indent if isinstance(indent, int) else indent or "")[:10]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "null" if isinstance(value, float) and not math.isfinite(value) else js_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    inner, outer = ("\n" + pad * (_level + 1), "\n" + pad * _level) if pad else ("", "")
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        colon = ": " if pad else ":"
        items = [
            f"{inner}{json.dumps(str(k), ensure_ascii=False)}{colon}{js_json(v, indent, _level + 1)}"
            for k, v in value.items()
        ]
        return "{" + ",".join(items) + outer + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + ",".join(f"{inner}{js_json(v, indent, _level + 1)}" for v in value) + outer + "]"
    return json.dumps(str(value), ensure_ascii=False)


def json_parse(text: str) -> Any:
    """`JSON.parse`: strict JSON (no NaN or Infinity). Raises ValueError."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- promptfoo's helpers

_VAR_REF = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_TEMPLATE_VARS = re.compile(r"\{\{[\s]*([^{}\s|]+)[\s]*(?:\|[^}]+)?\}\}|\{%[\s]*(?:if|for)[\s]+([^{}\s]+)[\s]*.*?%\}")
_FOR_LOOP = re.compile(r"\{%[\s]*for[\s]+(\w+)[\s]+in[\s]+(\w+)[\s]*%\}")
_PARTIAL = re.compile(r"({%[^%]*$|{{[^}]*$|{#[^#]*$)", re.M)
_RAW = (re.compile(r"{%\s*raw\s*%}"), re.compile(r"{%\s*endraw\s*%}"))


def resolve_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """promptfoo's `resolveVariables`: `{{ other }}` in a string var becomes `other`'s value
    (one placeholder per var per pass, up to 5 passes; a var the case lacks stays)."""
    resolved = dict(variables)
    for _ in range(5):
        changed = False
        for key, value in resolved.items():
            if not isinstance(value, str):
                continue
            match = _VAR_REF.search(value)
            if match and resolved.get(match.group(1)) is not None:
                resolved[key] = value.replace(match.group(0), js_string(resolved[match.group(1)]), 1)
                changed = True
        if not changed:
            break
    return resolved


def references_undefined(template: str, variables: Mapping[str, Any]) -> bool:
    """promptfoo's `referencesUndefinedVariables` (a regex, not a parse: `{% if true %}` counts
    `true` as a variable): such a var value is used verbatim, not rendered."""
    text = re.sub(r"\{#[\s\S]*?#\}", "", template)
    names = {m.group(1) or m.group(2) for m in _TEMPLATE_VARS.finditer(text)}
    for loop in _FOR_LOOP.finditer(text):
        names.discard(loop.group(1))
        names.add(loop.group(2))
    for name in names:
        root = re.match(r"^([A-Za-z_]\w*)", name or "")
        if root and root.group(1) != "env" and variables.get(root.group(1)) is None:
            return True
    return False


def wrap_partial(template: str) -> str:
    """promptfoo's `autoWrapRawIfPartialNunjucks`: a text with an unclosed `{{`, `{%` or `{#` on
    a line is wrapped in `{% raw %}` (so it is not rendered at all)."""
    if _PARTIAL.search(template) and not (_RAW[0].search(template) and _RAW[1].search(template)):
        return "{% raw %}" + template + "{% endraw %}"
    return template


# ----------------------------------------------------------------------------- the environment


def budgeted_range(*args: int) -> range:
    from jinja2.sandbox import MAX_RANGE

    made = range(*args)
    if len(made) > MAX_RANGE:
        raise OverflowError(f"range() of {len(made):,} items: a template may make at most {MAX_RANGE:,} per call")
    budget = _budget.get(None)
    if budget is not None:
        budget[0] -= len(made)
        if budget[0] < 0:
            raise OverflowError(f"range() calls of one render made more than {MAX_RANGE_ITEMS:,} items")
    return made


def _join(value: Any, delimiter: str = "", attribute: Any = None) -> str:
    items = list(value) if not isinstance(value, str) else list(value)
    if attribute is not None:
        items = [
            item.get(attribute) if isinstance(item, Mapping) else getattr(item, str(attribute), None) for item in items
        ]
    return str(delimiter).join("" if item is None else js_string(item) for item in items)


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    """The sandboxed environment of suite templates (cached: it holds no run state)."""
    from jinja2 import ChainableUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class JsUndefined(ChainableUndefined):
        """An attribute or item that does not exist: empty, and chainable (`a.b.c`)."""

        __slots__ = ()

    class NunjucksEnvironment(ImmutableSandboxedEnvironment):
        def getattr(self, obj: Any, attribute: str) -> Any:
            if attribute == "length" and isinstance(obj, (str, list, tuple)):
                return len(obj)
            if isinstance(obj, Mapping) and attribute in obj:  # `{{ vars.items }}` is the key, as in JS
                return obj[attribute]
            return super().getattr(obj, attribute)

        def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
            # An undefined that renders empty would hide the attempt: refused at once.
            from jinja2.exceptions import SecurityError

            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe.")

    env = NunjucksEnvironment(
        loader=_working_dir_loader(),
        undefined=JsUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=lambda value: js_string(value) if not isinstance(value, str) else value,
    )
    env.filters.update(
        dump=lambda value, indent=None: js_json(value, indent),
        load=lambda text: json_parse(str(text)),
        join=_join,
        string=js_string,
        nl2br=lambda text: re.sub(r"\r\n|\n", "<br />\n", js_string(text)),
    )
    env.globals["range"] = budgeted_range
    return env


def _working_dir_loader() -> Any:
    """The loader of `{% include %}`, `{% import %}` and `{% extends %}`: files under the directory
    the run works in, as promptfoo's `nunjucks.configure()` (a FileSystemLoader on '.') reads them,
    so not the suite file's folder; a name that climbs out of it (`..`) is not found."""
    from jinja2 import BaseLoader, TemplateNotFound
    from jinja2.loaders import split_template_path

    class WorkingDirLoader(BaseLoader):
        def get_source(self, environment: Any, template: str) -> tuple[str, str, Any]:
            base = Path.cwd()
            missing = (
                f"template not found: {template} (read relative to the working directory {base}, as promptfoo does)"
            )
            try:
                path = base.joinpath(*split_template_path(template))
                source = path.read_text(encoding="utf-8")
                mtime = path.stat().st_mtime
            except (OSError, TemplateNotFound):  # split_template_path refuses `..`
                raise TemplateNotFound(template, missing) from None
            # the environment is shared by every run of the process: a cached template is stale
            # once the run works elsewhere or the file changed
            return source, str(path), lambda: Path.cwd() == base and _mtime(path) == mtime

    return WorkingDirLoader()


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def render(compiled: Any, variables: Mapping[str, Any]) -> str:
    """Render a compiled template within the budget; raises what the template raises (OverflowError
    for a budget spent)."""
    token = _budget.set([MAX_RANGE_ITEMS])
    try:
        out: list[str] = []
        size = 0
        for chunk in compiled.generate(**variables):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise OverflowError(f"the template renders more than {MAX_OUTPUT:,} characters")
            out.append(chunk)
        return "".join(out)
    finally:
        _budget.reset(token)
