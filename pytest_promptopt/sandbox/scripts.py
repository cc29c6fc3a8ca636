"""The code that sits around a case, as promptfoo runs it: transforms (src/util/transform.ts),
prompt functions (src/prompts/processors/javascript.ts, python.ts), var loaders (`file://x.py`
`get_var`, `file://x.js`; src/evaluatorHelpers.ts renderPrompt) and Nunjucks filters from files.

Every failure here is a `ScriptFault` with promptfoo's wording (promptfoo makes the case an error).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import ScriptFault, ScriptRaised, ScriptTimeout
from .javascript import call_file, call_inline, is_javascript_file
from .python_code import call_python_file
from .sandbox import Sandbox

__all__ = ["is_code_reference", "load_code_var", "make_filter", "run_prompt_function", "run_transform"]


def is_code_reference(value: Any) -> bool:
    """A `file://` reference to JavaScript or Python (a var loader, a prompt function)."""
    if not isinstance(value, str) or not value.startswith("file://"):
        return False
    path = value[len("file://") :]
    head, sep, tail = path.rpartition(":")
    if sep and head and tail.isidentifier():
        path = head
    return is_javascript_file(path) or path.lower().endswith(".py")


def _transform_label(code: str) -> str:
    """promptfoo's getTransformLabel."""
    if code.startswith("file://"):
        return "[file transform]"
    line = " ".join(code.split())
    return f"[inline transform]: {line if len(line) <= 80 else line[:79] + '…'}"


def run_transform(
    sandbox: Sandbox,
    code: str,
    value: Any,
    context: Mapping[str, Any],
    base_dir: Path,
    timeout: float,
    what: str,
    input_type: str = "output",
) -> Any:
    """promptfoo's `transform(code, value, context)`: inline JavaScript (`return <code>` for one
    line), or `file://x.js[:fn]` / `file://x.py[:fn]` (Python's default `get_transform`). A
    result of null/undefined, a throw or a fault raises `ScriptFault` ("Transform failed ...")."""
    label = _transform_label(code)
    args = [value, dict(context)]
    try:
        if code.startswith("file://"):
            reference = code[len("file://") :]
            colon = reference.rfind(":")
            path, function = (reference[:colon], reference[colon + 1 :]) if colon > 1 else (reference, None)
            file = base_dir / path
            if is_javascript_file(path):
                reply = call_file(sandbox, file, function, "transform", args, timeout, what)
                result, missing = reply.get("value"), reply["type"] in ("undefined", "null")
            elif path.lower().endswith(".py"):
                result = call_python_file(sandbox, file, function or "get_transform", args, timeout, what, "transform")
                missing = result is None
            else:
                raise ScriptFault(f"{what}: Unsupported transform file format: file://{path}")
        else:
            body = code if "\n" in code else f"return {code}"
            reply = call_inline(sandbox, [input_type, "context"], body, args, "transform", timeout, what)
            result, missing = reply.get("value"), reply["type"] in ("undefined", "null")
    except ScriptRaised as exc:
        raise ScriptFault(f"{what}: Transform failed ({label}): {exc.message}") from None
    if missing:
        raise ScriptFault(f"{what}: Transform function did not return a value\n\n{label}")
    return result


def run_prompt_function(
    sandbox: Sandbox,
    reference: str,
    variables: Mapping[str, Any],
    provider: Mapping[str, Any],
    config: Mapping[str, Any],
    timeout: float,
    what: str,
) -> tuple[str, dict[str, Any]]:
    """Call a prompt function (`file://p.js[:fn]`, `file://p.py:fn`) with promptfoo's
    `{vars, provider: {id, label}, config}`; its prompt template and the config it adds.
    A string is the template; `{prompt, config}` gives both; any other object is its JSON."""
    path, _, function = reference[len("file://") :].rpartition(":")
    if not path or not function.isidentifier():
        path, function = reference[len("file://") :], ""
    file = Path(path)
    context = {"vars": dict(variables), "provider": dict(provider), "config": dict(config)}
    try:
        if is_javascript_file(path):
            reply = call_file(sandbox, file, function or None, "function", [context], timeout, what)
            kind, result = reply["type"], reply.get("value")
        elif function:
            result = call_python_file(sandbox, file, function, [context], timeout, what, "function")
            kind = "string" if isinstance(result, str) else ("object" if result is not None else "null")
        else:
            return _legacy_python_prompt(file, context, timeout, what), {}
    except ScriptRaised as exc:
        raise ScriptFault(f"{what}: prompt function {reference} raised {exc}") from None
    if kind == "string":
        return str(result), {}
    if kind in ("object", "null") and isinstance(result, Mapping) and "prompt" in result:
        prompt = result["prompt"]
        extra = result.get("config") if isinstance(result.get("config"), Mapping) else {}
        return (prompt if isinstance(prompt, str) else _json(prompt)), dict(extra)
    if kind in ("object",) and result is not None:
        return _json(result), {}
    raise ScriptFault(f"{what}: Prompt function must return a string or object, got {kind}")


def _legacy_python_prompt(file: Path, context: Mapping[str, Any], timeout: float, what: str) -> str:
    """promptfoo's legacy Python prompt (`file://p.py` without a function): the script runs with
    the JSON context as its first argument, and its standard output is the prompt."""
    try:
        done = subprocess.run(
            [sys.executable, str(file), _json(context)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise ScriptTimeout(f"{what} did not return within {timeout:g} s (--promptopt-script-timeout)") from None
    except OSError as exc:
        raise ScriptFault(f"{what}: cannot run {file}: {exc.strerror or exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ScriptFault(f"{what}: Error running Python script {file}: {last}")
    return "\n".join(done.stdout.splitlines())


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def load_code_var(
    sandbox: Sandbox,
    name: str,
    reference: str,
    template: str,
    variables: Mapping[str, Any],
    provider: Mapping[str, Any],
    base_dir: Path,
    timeout: float,
    what: str,
) -> str:
    """A var whose value is `file://x.py` (`get_var(name, prompt, vars)`, its `output` trimmed)
    or `file://x.js` (the module called with `(name, prompt, vars, provider)`, its `output`)."""
    path = reference[len("file://") :]
    file = base_dir / path
    try:
        if is_javascript_file(path):
            reply = call_file(
                sandbox, file, None, "function", [name, template, dict(variables), dict(provider)], timeout, what
            )
            result = reply.get("value")
            if isinstance(result, Mapping) and result.get("error"):
                raise ScriptFault(f"{what}: Error running {file}: {result['error']}")
            if not isinstance(result, Mapping) or not result.get("output"):
                raise ScriptFault(f"{what}: Expected {file} to return {{ output: string }} but got {result!r}")
            return str(result["output"])
        result = call_python_file(
            sandbox, file, "get_var", [name, template, dict(variables)], timeout, what, "function"
        )
    except ScriptRaised as exc:
        raise ScriptFault(f"{what}: Error running Python script {file}: {exc}") from None
    if isinstance(result, Mapping) and result.get("error"):
        raise ScriptFault(f"{what}: Error running Python script {file}: {result['error']}")
    if not isinstance(result, Mapping) or not result.get("output"):
        raise ScriptFault(f"{what}: Python script {file} did not return any output")
    if not isinstance(result["output"], str):
        raise ScriptFault(
            f"{what}: pythonScriptOutput.output must be a string. Received: {type(result['output']).__name__}"
        )
    return result["output"].strip()


def make_filter(sandbox: Sandbox, file: Path, timeout: float, what: str) -> Callable[..., Any]:
    """A Nunjucks filter from a JavaScript file (its default export), as a Jinja filter."""

    def apply(value: Any, *args: Any) -> Any:
        try:
            reply = call_file(sandbox, file, None, "function", [value, *args], timeout, what)
        except ScriptRaised as exc:
            raise ScriptFault(f"{what}: filter {file.name} raised {exc}") from None
        return "" if reply["type"] in ("undefined", "null") else reply.get("value")

    return apply
