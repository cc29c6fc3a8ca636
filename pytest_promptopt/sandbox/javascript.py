"""JavaScript as promptfoo runs it: inline code becomes `new Function(params..., body)`, modules
are imported and a function picked from them; both called with JSON data, answered as a reply
(`{"ok": True, "type": <typeof>, "value": ...}`).

Inline code and plain CommonJS modules run in mini-racer; modules that `require`/`import`
packages, ESM and TypeScript files, and async modules run in node when it is on the PATH (a node
child can be stopped at its time limit; V8 inside this process cannot, once code awaits). Without
node, ESM and type-free TypeScript modules are rewritten to CommonJS for mini-racer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ScriptFault, ScriptRaised
from .sandbox import JS_INSTALL, Reply, Sandbox, environment

__all__ = ["JS_SUFFIXES", "build_function_body", "call_file", "call_inline", "is_javascript_file"]

# promptfoo's isJavascriptFile (src/util/fileExtensions.ts)
JS_SUFFIXES = (".js", ".cjs", ".mjs", ".ts", ".cts", ".mts")
_NODE_ONLY = re.compile(r"\brequire\s*\(|^\s*import\b|\bimport\s*\(|\bmainModule\b", re.M)
_ESM = re.compile(r"^\s*export\s", re.M)
_ASYNC = re.compile(r"\basync\b|\bawait\b|\.then\s*\(|\bPromise\b|\bsetTimeout\b")


def is_javascript_file(path: str) -> bool:
    return path.lower().endswith(JS_SUFFIXES)


def _last_statement_semicolon(code: str) -> int:
    """promptfoo's findLastStatementSemicolon: the last `;` outside quotes and template literals."""
    single = double = template = False
    last = -1
    for index, char in enumerate(code):
        escaped = (len(code[:index]) - len(code[:index].rstrip("\\"))) % 2 == 1
        if not escaped:
            if char == "'" and not double and not template:
                single = not single
            elif char == '"' and not single and not template:
                double = not double
            elif char == "`" and not single and not double:
                template = not template
        if char == ";" and not single and not double and not template:
            last = index
    return last


def build_function_body(code: str) -> str:
    """promptfoo's buildFunctionBody for a one-line check: `return <expr>`, or `stmts; return <expr>`
    when it starts with a declaration."""
    trimmed = re.sub(r";+\s*$", "", code.strip())
    if re.match(r"^(const|let|var)\s", trimmed):
        last = _last_statement_semicolon(trimmed)
        if last != -1:
            statements, expression = trimmed[: last + 1], trimmed[last + 1 :].strip()
            if expression:
                return f"{statements} return {expression}"
        return trimmed
    return f"return {trimmed}"


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=True)


def call_inline(
    sandbox: Sandbox,
    params: Sequence[str],
    body: str,
    args: Sequence[Any],
    style: str,
    timeout: float,
    what: str,
) -> Reply:
    """Call `new Function(*params, "process", body)(*args, process)`; style `check` or
    `transform` gives `context.provider` its `id()` method."""
    all_params = [*params, "process"]
    wants_node = bool(_NODE_ONLY.search(body))
    if sandbox.racer_available() and not (wants_node and sandbox.node_available()):
        call = (
            f"__promptopt.inline({_literal(all_params)}, {_literal(body)}, {_literal(list(args))}, "
            f"{_literal(style)}, {_literal(environment())})"
        )
        return sandbox.racer(call, timeout, what)
    if sandbox.node_available():
        return sandbox.node({"params": all_params, "body": body, "args": list(args), "style": style}, timeout, what)
    raise ScriptFault(f"{what}: JavaScript cannot run here: {JS_INSTALL}")


def call_file(
    sandbox: Sandbox,
    file: Path,
    function: str | None,
    style: str,
    args: Sequence[Any],
    timeout: float,
    what: str,
) -> Reply:
    """Import `file` and call the function `style` picks (`check`: promptfoo's
    loadFromJavaScriptFile, `transform`: getJavascriptTransformFunction, `function`: the module or
    its `function` export, `module`: the module's value itself, `generator`: the module or its
    `function` export, called if it is a function) with `args`."""
    try:
        source = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScriptRaised("Error", f"ENOENT: no such file or directory, open '{file}'") from None
    except OSError as exc:
        raise ScriptRaised("Error", f"cannot read {file}: {exc.strerror}") from None
    suffix = file.suffix.lower()
    modern = suffix in (".mjs", ".ts", ".mts", ".cts") or bool(_ESM.search(source))
    imports = bool(_NODE_ONLY.search(source))
    awaits = bool(_ASYNC.search(source))
    request = {"file": str(file), "function": function, "style": style, "args": list(args)}
    if sandbox.node_available() and (imports or modern or awaits or not sandbox.racer_available()):
        return sandbox.node(request, timeout, what)
    if imports:
        raise ScriptFault(f"{what}: {file} loads other modules (require/import), which needs node on the PATH")
    if not sandbox.racer_available():
        raise ScriptFault(f"{what}: JavaScript cannot run here: {JS_INSTALL}")
    if modern:
        source = _esm_to_cjs(source)
    key = f"{file}:{file.stat().st_mtime_ns}"
    call = (
        f"__promptopt.module({_literal(key)}, {_literal(source)}, {_literal(str(file))}, "
        f"{_literal(function)}, {_literal(style)}, {_literal(list(args))})"
    )
    try:
        return sandbox.racer(call, timeout, what)
    except ScriptRaised as exc:
        if exc.type_name == "SyntaxError" and suffix in (".ts", ".mts", ".cts"):
            raise ScriptFault(
                f"{what}: {file} is TypeScript with type annotations, which needs node >= 22.6 on the PATH "
                f"({exc.message})"
            ) from None
        raise


def _esm_to_cjs(source: str) -> str:
    """An ES module without imports as CommonJS, for mini-racer (node runs it as it is)."""
    source = re.sub(r"^(\s*)export\s+default\s+", r"\1module.exports.default = ", source, flags=re.M)
    source = re.sub(
        r"^(\s*)export\s+(async\s+)?function\s*(\*?)\s*(\w+)",
        r"\1module.exports.\4 = \2function\3 \4",
        source,
        flags=re.M,
    )
    source = re.sub(r"^(\s*)export\s+class\s+(\w+)", r"\1module.exports.\2 = class \2", source, flags=re.M)
    return re.sub(r"^(\s*)export\s+(const|let|var)\s+(\w+)\s*=", r"\1\2 \3 = module.exports.\3 =", source, flags=re.M)
