"""`javascript` and `python` checks as promptfoo runs them (src/assertions/javascript.ts,
python.ts, scriptResultNormalization.ts in promptfoo 0.121.20), through the run's `Sandbox`.

What counts as a failed check and what as an error of the case follows promptfoo: inline
JavaScript that throws, and Python that raises, fail the check; a JavaScript *file* that throws
(or cannot be loaded) errors the case. Code that gives no answer (a time limit, `sys.exit()`, a
crash, no engine) always errors the case, naming the assertion's place.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from ..prompt import TemplateError, render_template
from ..sandbox import ScriptFault, ScriptRaised, sandbox_for
from ..sandbox.javascript import build_function_body, call_file, call_inline
from ..sandbox.python_code import call_python_code, call_python_file, call_python_module
from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register
from .python_ref import call_function, grade_from_result

__all__ = ["is_grading_result", "js_string", "python_form", "python_result", "script_context", "snake_to_camel"]

_MODULE_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # `package.module:function` (ours)


def js_string(value: Any) -> str:
    """`JSON.stringify(value)` as JavaScript writes it (no spaces)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=True)


def script_context(output: str, assertion: Assertion, ctx: AssertionContext) -> dict[str, Any]:
    """promptfoo's `context` for a code check: prompt, vars, test, provider, providerResponse,
    config (when the assertion has one), as JSON data."""
    response = ctx.response
    context: dict[str, Any] = {
        "prompt": ctx.prompt,
        "vars": _json_data(dict(ctx.vars)),
        "test": _json_data(dict(ctx.test) or {"vars": dict(ctx.vars)}),
        "logProbs": None,
        "provider": dict(ctx.provider),
        "providerResponse": {
            "output": output if ctx.output_value is None else ctx.output_value,
            "raw": response.text if response else output,
            "cost": response.cost if response else None,
            "cached": bool(response.cached) if response else False,
            "tokenUsage": {
                "prompt": response.prompt_tokens if response else None,
                "completion": response.completion_tokens if response else None,
            },
        },
    }
    if assertion.config:
        context["config"] = _json_data(dict(assertion.config))
    return context


def _json_data(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, ensure_ascii=False))


def is_grading_result(value: Any) -> bool:
    """promptfoo's isGradingResult: `pass` boolean, `score` number and `reason` string."""
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("pass"), bool)
        and isinstance(value.get("score"), (int, float))
        and not isinstance(value.get("score"), bool)
        and isinstance(value.get("reason"), str)
    )


def snake_to_camel(value: Any) -> Any:
    """promptfoo's mapSnakeCaseToCamelCase (0.121.20): `pass_`, `named_scores`, `component_results`
    and `tokens_used` are also given under their camelCase names (unless those are written too),
    in the result and in each of its componentResults; every other key stays as written, so a
    named score `true_positives` keeps its name (a derivedMetrics formula reads it so)."""
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    for snake, camel in _CAMEL_KEYS:
        if snake in out and camel not in out:
            out[camel] = out[snake]
    if isinstance(out.get("componentResults"), list):
        out["componentResults"] = [snake_to_camel(c) for c in out["componentResults"]]
    return out


_CAMEL_KEYS = (
    ("pass_", "pass"),
    ("named_scores", "namedScores"),
    ("component_results", "componentResults"),
    ("tokens_used", "tokensUsed"),
)


def _code_grade(
    result: Any, assertion: Assertion, code_label: str, suffix: str | None, *, keep_reason: bool = True
) -> Grade:
    """promptfoo's normalizeScriptAssertionResult: a boolean, a number (against `threshold`) or a
    GradingResult, `not-` applied (a number's or result's score is kept)."""
    inverse = assertion.inverse

    def failure(raw_pass: bool) -> str:
        reason = f"{code_label} returned {'true' if raw_pass else 'false'}"
        return f"{reason}\n{suffix}" if suffix else reason

    if isinstance(result, bool):
        passed = result != inverse
        return Grade(passed, 1.0 if passed else 0.0, "Assertion passed" if passed else failure(result))
    if isinstance(result, (int, float)):
        raw = result > 0 if assertion.threshold is None else result >= assertion.threshold
        passed = raw != inverse
        return Grade(passed, float(result), "Assertion passed" if passed else failure(raw))
    passed = result["pass"] != inverse
    if passed == result["pass"]:
        reason = str(result["reason"])
    else:
        reason = "Assertion passed" if passed else f"{code_label} returned {'true' if result['pass'] else 'false'}"
    named = result.get("namedScores") if isinstance(result.get("namedScores"), Mapping) else {}
    return Grade(passed, float(result["score"]), reason, {str(k): float(v) for k, v in named.items()})


def _failed(reason: str) -> Grade:
    return Grade(False, 0.0, reason)


# ----------------------------------------------------------------------------- javascript


def _js_value(output: str, ctx: AssertionContext) -> Any:
    return output if ctx.output_value is None else ctx.output_value


def _split_js_reference(value: str) -> tuple[str, str | None]:
    """promptfoo splits a check's `file://path:fn` at the first `:` after `file://`."""
    path, _, function = value[len("file://") :].partition(":")
    return path, function or None


@register("javascript", check=lambda a: _check_code(a, "javascript"), inverse_aware=True)
def javascript(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    value = str(assertion.value)
    args = [_js_value(output, ctx), script_context(output, assertion, ctx)]
    what = f"javascript check at {assertion.located}"
    with sandbox_for(ctx.sandbox) as sandbox:
        if value.startswith("file://"):
            path, function = _split_js_reference(value)
            try:
                reply = call_file(sandbox, ctx.base_dir / path, function, "check", args, ctx.script_timeout_s, what)
            except ScriptRaised as exc:  # promptfoo: errors of a JavaScript file error the case
                raise AssertionEvaluationError(f"{what}: {exc}") from None
            except ScriptFault as exc:
                raise AssertionEvaluationError(str(exc)) from None
            rendered = value.rstrip()
            if reply["type"] not in ("boolean", "number", "object", "null"):
                return _failed(
                    "Custom function threw error: Invariant failed: Javascript assertion script must return "
                    f"a boolean, number, or object ({value})\n{rendered}"
                )
        else:
            rendered = value.rstrip()  # promptfoo's trimEnd: a YAML `|` one-liner stays one line
            body = rendered if "\n" in rendered else build_function_body(rendered)
            try:
                reply = call_inline(sandbox, ["output", "context"], body, args, "check", ctx.script_timeout_s, what)
            except ScriptRaised as exc:
                return _failed(f"Custom function threw error: {exc.message}\nStack Trace: {exc.trace}\n{rendered}")
            except ScriptFault as exc:
                raise AssertionEvaluationError(str(exc)) from None
    result = reply.get("value")
    if reply["type"] not in ("boolean", "number") and not is_grading_result(result):
        shown = "undefined" if reply["type"] in ("undefined", "function") else js_string(result)
        message = (
            "Custom function must return a boolean, number, or GradingResult object. "
            f"Got type {'object' if reply['type'] == 'null' else reply['type']}: {shown}"
        )
        return _failed(f"Custom function threw error: {message}\n{rendered}")
    if isinstance(result, float) and math.isnan(result):
        raise AssertionEvaluationError(f"{what} returned NaN")
    return _code_grade(result, assertion, "Custom function", rendered)


# ----------------------------------------------------------------------------- python


def _check_code(assertion: Assertion, kind: str) -> None:
    if kind == "python" and callable(assertion.value):
        return
    if not isinstance(assertion.value, str) or not assertion.value.strip():
        raise AssertionConfigError(
            f"{assertion.where or kind}: the value is {kind} code (an expression, or a body that returns) "
            f"or a file://path{'.py' if kind == 'python' else '.js'}[:function] reference"
        )


def python_result(result: Any, assertion: Assertion) -> Grade:
    """promptfoo's normalizeScriptResult for Python: booleans and "true"/"false", JSON strings,
    snake_case result objects (reason required; a threshold caps pass), then numbers."""
    suffix = str(assertion.value)
    lowered = result.lower() if isinstance(result, str) else None
    if result is True or lowered == "true":
        return _code_grade(True, assertion, "Python code", suffix)
    if result is False or lowered == "false":
        return _code_grade(False, assertion, "Python code", suffix)
    if isinstance(result, str) and result.startswith("{"):
        try:
            parsed = json.loads(result)
        except ValueError as exc:
            raise _Malformed(f"Invalid JSON: {exc} when parsing result: {result}") from None
        if not isinstance(parsed, dict):
            raise _Malformed(
                "Python assertion must return a boolean, number, or {pass, score, reason} object. "
                f"Got instead: {result}"
            )
        result = parsed
    if isinstance(result, Mapping):
        mapped = snake_to_camel(result)
        if not is_grading_result(mapped):
            raise _Malformed(
                "Python assertion must return a boolean, number, or {pass, score, reason} object. "
                f"Got instead:\n{json.dumps(mapped, indent=2, ensure_ascii=False)}"
            )
        if assertion.threshold is not None and mapped["score"] < assertion.threshold:
            message = (
                f"Python score {_js_number(mapped['score'])} is less than threshold {_js_number(assertion.threshold)}"
            )
            mapped = {
                **mapped,
                "pass": False,
                "reason": f"{message}: {mapped['reason']}" if mapped["reason"] else message,
            }
        return _code_grade(mapped, assertion, "Python code", suffix)
    score = _parse_float("null" if result is None else _py_str(result))
    if score is None:
        raise _Malformed(
            "Python assertion must return a boolean, number, or {pass, score, reason} object. "
            f"Instead got:\n{'null' if result is None else _py_str(result)}"
        )
    return _code_grade(score, assertion, "Python code", suffix)


class _Malformed(ValueError):
    """A Python check's result promptfoo does not accept (a failed check)."""


def _py_str(value: Any) -> str:
    if isinstance(value, list):
        return ",".join("" if v is None else _py_str(v) for v in value)  # String(array) in JavaScript
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _parse_float(text: str) -> float | None:
    """JavaScript's parseFloat: the longest numeric prefix, else None."""
    match = re.match(r"\s*([+-]?(?:Infinity|\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?))", text)
    return float(match.group(1).replace("Infinity", "inf")) if match else None


def _js_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def python_form(value: str) -> tuple[str, str, str]:
    """What a `python` check's value names: `("file", path, function)` for `file://x.py[:fn]` or
    `x.py[:fn]` (default `get_assert`), `("module", module, function)` for `package.module:fn`,
    else `("inline", code, "")`."""
    text = value.strip()
    body = text[len("file://") :] if text.startswith("file://") else text
    head, sep, tail = body.rpartition(":")
    if sep and head.endswith(".py") and tail.replace(".", "_").isidentifier():
        return "file", head, tail
    if text.startswith("file://") or body.endswith(".py") and "\n" not in body and " " not in body:
        return "file", body, "get_assert"
    if _MODULE_REFERENCE.match(text):
        module, _, function = text.rpartition(":")
        return "module", module, function
    return "inline", value, ""


def _run_python(form: tuple[str, str, str], output: str, assertion: Assertion, ctx: AssertionContext, what: str) -> Any:
    kind, target, function = form
    args = [_js_value(output, ctx), script_context(output, assertion, ctx)]
    with sandbox_for(ctx.sandbox) as sandbox:
        if kind == "file":
            return call_python_file(sandbox, ctx.base_dir / target, function, args, ctx.script_timeout_s, what)
        if kind == "module":
            path = [str(ctx.base_dir), *sys.path]  # resolved as an import in this process would be
            return call_python_module(sandbox, target, function, args, ctx.script_timeout_s, what, path)
        try:
            code = render_template(target, ctx.vars) if ("{{" in target or "{%" in target) else target
        except TemplateError as exc:
            raise AssertionConfigError(f"{assertion.where}: python code {exc}") from None
        return call_python_code(sandbox, code, args, ctx.script_timeout_s, what)


@register("python", render_value=False, check=lambda a: _check_code(a, "python"), inverse_aware=True)
def python(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    if callable(assertion.value):
        return _python_callable(output, assertion, ctx, assertion.value)
    form = python_form(str(assertion.value))
    what = f"python check at {assertion.located}"
    try:
        result = _run_python(form, output, assertion, ctx, what)
    except ScriptRaised as exc:
        reason = f"Error running Python script: {exc}\nStack Trace: {exc.trace}"
        return _failed(f"Python code execution failed: {reason}" if form[0] == "inline" else reason)
    except ScriptFault as exc:
        raise AssertionEvaluationError(str(exc)) from None
    try:
        return python_result(result, assertion)
    except _Malformed as exc:
        return _failed(f"Python code execution failed: {exc}")


def _python_callable(output: str, assertion: Assertion, ctx: AssertionContext, fn: Callable[..., Any]) -> Grade:
    """A Python function given in a test (`python(fn)`): called here, as before."""
    reference = getattr(fn, "__qualname__", repr(fn))
    context = {
        "vars": dict(ctx.vars),
        "prompt": ctx.prompt,
        "config": dict(assertion.config or {}),
        "response": ctx.response.to_dict() if ctx.response else None,
    }
    try:
        result = call_function(fn, output, context)
    except Exception as exc:
        raise AssertionEvaluationError(f"python assertion {reference} raised {type(exc).__name__}: {exc}") from exc
    grade = grade_from_result(result, assertion.threshold, f"python assertion {reference}")
    if assertion.inverse:  # promptfoo keeps a python check's own score under `not-`
        passed = not grade.passed
        return Grade(passed, grade.score, "Assertion passed" if passed else "Expected output not to satisfy python")
    return grade
