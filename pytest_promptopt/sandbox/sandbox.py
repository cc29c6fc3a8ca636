"""`Sandbox`: the engines that run a run's user code, each call with a time limit.

- Python: long-lived `py_runner.py` child processes of this interpreter (workers.py).
- JavaScript: mini-racer (an embedded V8, the `js` extra) for inline code and plain CommonJS
  modules; node (when on the PATH) for modules that `require`/`import` packages, ESM, TypeScript
  and async code, through `js_runner.mjs` children.

The session owns one (`PromptoptSession.sandbox`) and hands it to the runner; a caller without
one uses `Sandbox()` for the call and closes it. Replies are decoded here: a value, or
`ScriptRaised` (the code raised), or `ScriptFault` / `ScriptTimeout` (no answer).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import ScriptFault, ScriptRaised, ScriptTimeout
from .workers import WorkerPool

__all__ = ["Reply", "Sandbox", "sandbox_for"]

HERE = Path(__file__).resolve().parent
NODE_MARK = "\x1ePROMPTOPT "
JS_INSTALL = (
    "install the JavaScript engine (pip install 'pytest-promptopt[js]', which brings mini-racer) "
    "or put node (https://nodejs.org) on the PATH"
)

Reply = dict[str, Any]  # {"ok": True, "type": ..., "value": ...} or {"ok": False, "fault": ..., ...}


def decode(reply: Reply, what: str) -> Reply:
    """`reply` when the code answered; raises for a raise, an exit or a BaseException."""
    if reply.get("ok"):
        return reply
    fault = reply.get("fault")
    if fault == "exit":
        raise ScriptFault(f"{what} called sys.exit({reply.get('message')}) instead of returning")
    if fault == "base":
        raise ScriptFault(f"{what} raised {reply.get('type')}: {reply.get('message')}")
    raise ScriptRaised(str(reply.get("type") or "Error"), str(reply.get("message")), str(reply.get("trace") or ""))


class Sandbox:
    """Runs user code for one run (see the module docstring); `close()` ends its processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._python: WorkerPool | None = None
        self._node: WorkerPool | None = None
        self._node_checked = False
        self._node_argv: list[str] | None = None
        self._racers: list[Any] = []
        self._harness: str | None = None
        self._racer_missing: bool | None = None
        self._closed = False

    # ------------------------------------------------------------------ Python

    def python(self, request: dict[str, Any], timeout: float, what: str) -> Any:
        """Call a Python function (`file`+`function`, `module`+`function`, or `code`+`function`)
        with `request["args"]`; its result as JSON data."""
        with self._lock:
            if self._python is None:
                self._python = WorkerPool([sys.executable, "-u", str(HERE / "py_runner.py")])
            pool = self._python
        return decode(pool.call(request, timeout, what), what).get("value")

    # ------------------------------------------------------------------ node

    def node_available(self) -> bool:
        return self._node_command() is not None

    def _node_command(self) -> list[str] | None:
        with self._lock:
            if not self._node_checked:
                self._node_checked = True
                node = shutil.which("node")
                if node is not None:
                    self._node_argv = [node, *_node_flags(node), str(HERE / "js_runner.mjs")]
            return self._node_argv

    def node(self, request: dict[str, Any], timeout: float, what: str) -> Reply:
        """A reply of the node runner (`file`/`function`/`style`, or inline `params`/`body`)."""
        argv = self._node_command()
        if argv is None:
            raise ScriptFault(f"{what} needs node on the PATH (https://nodejs.org)")
        with self._lock:
            if self._node is None:
                self._node = WorkerPool(argv, NODE_MARK)
            pool = self._node
        return decode(pool.call(request, timeout, what), what)

    # ------------------------------------------------------------------ mini-racer

    def racer_available(self) -> bool:
        if self._racer_missing is None:
            import importlib.util

            self._racer_missing = importlib.util.find_spec("py_mini_racer") is None
        return not self._racer_missing

    @contextlib.contextmanager
    def _racer(self) -> Iterator[Any]:
        with self._lock:
            context = self._racers.pop() if self._racers else None
        if context is None:
            from py_mini_racer import MiniRacer

            context = MiniRacer()
            if self._harness is None:
                self._harness = (HERE / "harness.js").read_text(encoding="utf-8")
            context.eval(self._harness)
        keep = False
        try:
            yield context
            keep = True
        finally:
            with self._lock:
                keep = keep and not self._closed
                if keep:
                    self._racers.append(context)
            if not keep:  # timed out or broken: closed on the side, since V8 may still be busy in it
                threading.Thread(target=_close_quietly, args=(context,), daemon=True).start()

    def racer(self, call: str, timeout: float, what: str) -> Reply:
        """Evaluate `call` (a `__promptopt.*` call of harness.js) in a mini-racer context."""
        from py_mini_racer import JSTimeoutException

        with self._racer() as context:
            try:
                answer = context.eval(call, timeout_sec=timeout)
            except JSTimeoutException:
                raise ScriptTimeout(
                    f"{what} did not return within {timeout:g} s (--promptopt-script-timeout)"
                ) from None
            if not isinstance(answer, str):  # a promise of the JSON string
                answer = _await(answer, timeout, what)
        return decode(json.loads(answer), what)

    # ------------------------------------------------------------------ life

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pools = [p for p in (self._python, self._node) if p is not None]
            racers, self._racers = self._racers, []
        for pool in pools:
            pool.close()
        for context in racers:
            with contextlib.suppress(Exception):
                context.close()


def _close_quietly(context: Any) -> None:
    # V8 reports a terminated run a moment after the timeout; closing the context before that
    # report arrives makes mini-racer print "Event loop is closed" tracebacks.
    time.sleep(1.0)
    with contextlib.suppress(Exception):
        context.close()


def _await(promise: Any, timeout: float, what: str) -> str:
    """A mini-racer promise's value, waited for at most `timeout` s on a helper thread: V8 cannot
    stop code that runs after an `await`, so a promise that never settles is given up (its context
    is dropped) and the call is a timeout."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue()

    def wait() -> None:
        try:
            box.put((True, promise.get(timeout=timeout)))
        except Exception as exc:
            box.put((False, exc))

    threading.Thread(target=wait, name="promptopt-js-await", daemon=True).start()
    try:
        ok, value = box.get(timeout=timeout + 0.5)
    except queue.Empty:
        raise ScriptTimeout(f"{what} did not settle its promise within {timeout:g} s") from None
    if not ok:
        raise ScriptTimeout(f"{what} did not settle its promise within {timeout:g} s: {value}") from None
    return str(value)


def _node_flags(node: str) -> Sequence[str]:
    """node >= 22.6 strips TypeScript types itself (promptfoo loads .ts files through tsx)."""
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout
        major, minor = (int(x) for x in version.strip().lstrip("v").split(".")[:2])
    except (OSError, ValueError, subprocess.SubprocessError):
        return ()
    if (major, minor) >= (23, 6):
        return ("--no-warnings",)
    if (major, minor) >= (22, 6):
        return ("--experimental-strip-types", "--no-warnings")
    return ("--no-warnings",)


@contextlib.contextmanager
def sandbox_for(sandbox: Sandbox | None) -> Iterator[Sandbox]:
    """`sandbox`, or a fresh one closed after the block (callers outside a session)."""
    if sandbox is not None:
        yield sandbox
        return
    fresh = Sandbox()
    try:
        yield fresh
    finally:
        fresh.close()


def environment() -> dict[str, str]:
    """`process.env` of inline JavaScript (promptfoo's process shim gives the real one)."""
    return dict(os.environ)
