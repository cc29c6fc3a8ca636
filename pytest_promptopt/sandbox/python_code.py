"""Python as promptfoo runs it: inline code wrapped in `def main(output, context)` (buildPythonScript),
files called by function name (`get_assert`, `get_transform`, `get_var`, a prompt's `:fn`), all in a
child interpreter (`py_runner.py`) with JSON arguments and results.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ScriptRaised
from .sandbox import Sandbox

__all__ = ["build_python_script", "call_python_code", "call_python_file", "call_python_module"]


def build_python_script(code: str) -> str:
    """promptfoo's buildPythonScript: one line is `return <expr>`; several lines are the body of
    `main`, each indented by the first indented line's indentation (so they must `return`)."""
    if "\n" not in code:
        body = f"    return {code}"
    else:
        match = re.search(r"^(?!\s*$)\s+", code, flags=re.M)
        indent = match.group(0) if match else "    "
        body = "\n".join(indent + line for line in code.split("\n"))
    return f"import json\n\ndef main(output, context):\n{body}\n"


def call_python_code(
    sandbox: Sandbox, code: str, args: Sequence[Any], timeout: float, what: str, style: str = "check"
) -> Any:
    """Run promptfoo's inline script for `code` and return `main(*args)`."""
    request = {"code": build_python_script(code), "function": "main", "args": list(args), "style": style}
    return sandbox.python({**request, "label": what}, timeout, what)


def call_python_file(
    sandbox: Sandbox, file: Path, function: str, args: Sequence[Any], timeout: float, what: str, style: str = "check"
) -> Any:
    """`function(*args)` from the Python file `file` (`Class.method` allowed)."""
    if not file.is_file():
        raise ScriptRaised("FileNotFoundError", f"[Errno 2] No such file or directory: '{file}'")
    request = {"file": str(file), "function": function, "args": list(args), "style": style}
    return sandbox.python(request, timeout, what)


def call_python_module(
    sandbox: Sandbox,
    module: str,
    function: str,
    args: Sequence[Any],
    timeout: float,
    what: str,
    path: Sequence[str] = (),
) -> Any:
    """`module:function` (an importable module; `path` is searched first)."""
    request = {"module": module, "function": function, "args": list(args), "style": "check", "path": list(path)}
    return sandbox.python(request, timeout, what)
