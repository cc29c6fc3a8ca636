"""The child process that runs users' Python for pytest-promptopt (checks, transforms, prompt
functions, var generators), as promptfoo's `wrapper.py` does: arguments and results cross as JSON.

One JSON request per line on stdin, one JSON reply per line on the protocol stream (the original
stdout; the user's prints go to stderr). It is started as a script (`python py_runner.py`) and
imports nothing of pytest_promptopt, so a request costs no plugin import. Replies:
`{"ok": true, "value": ...}`, or `{"ok": false, "fault": "raised"|"exit"|"base", "type", "message",
"trace"}`. Network connections are refused (a guard on `socket`, not a jail).
"""

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback

_NO_NETWORK = "network access is disabled for code run by pytest-promptopt's checks"


def _refuse(*_args, **_kwargs):
    raise PermissionError(_NO_NETWORK)


def _block_network():
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return original_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse()
        return original_connect_ex(self, address)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = _refuse
    socket.create_connection = _refuse


_modules = {}
_inline = {}


def _load_file(path):
    mtime = os.stat(path).st_mtime_ns
    key = (path, mtime)
    module = _modules.get(key)
    if module is None:
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        name = "_promptopt_user_" + hashlib.sha1(f"{path}:{mtime}".encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _modules[key] = module
    return module


def _function(request):
    if request.get("code") is not None:
        code = request["code"]
        namespace = _inline.get(code)
        if namespace is None:
            namespace = {"__name__": "__promptopt_inline__"}
            exec(compile(code, request.get("label") or "<inline python>", "exec"), namespace)
            _inline[code] = namespace
        return namespace[request["function"]]
    if request.get("module"):
        first, *rest = request.get("path") or [None]
        if first and first not in sys.path:
            sys.path.insert(0, first)  # the suite's folder
        sys.path.extend(folder for folder in rest if folder not in sys.path)  # the caller's import path
        target = importlib.import_module(request["module"])
    else:
        target = _load_file(request["file"])
    name = request["function"]
    if "." in name:
        owner, method = name.split(".", 1)
        return getattr(getattr(target, owner), method)
    return getattr(target, name)


class _Record(dict):
    """A DSPy-style metric's example or prediction: fields as attributes and items."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no field {name!r}; fields: {', '.join(self) or 'none'}") from None

    def toDict(self):  # noqa: N802  (DSPy's name)
        return dict(self)

    def __str__(self):
        return str(self.get("output", dict.__str__(self)))


_EXAMPLE_NAMES = {"example", "gold", "ex"}
_PREDICTION_NAMES = {"prediction", "pred"}


def _positional(fn):
    try:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return [p for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError):
        return None


def _call(fn, args, style):
    params = _positional(fn)
    if style == "check" and params is not None and len(params) >= 2:
        names = [p.name for p in params]
        if names[0] in _EXAMPLE_NAMES or names[1] in _PREDICTION_NAMES or names[2:3] == ["trace"]:
            # a DSPy-style metric(example, prediction, trace=None): the case's vars and the output
            output, context = args[0], args[1]
            text = output if isinstance(output, str) else json.dumps(output)
            call = [_Record(context.get("vars") or {}), _Record(output=text, answer=text)]
            call.extend(None for p in params[2:] if p.default is inspect.Parameter.empty)
            args = call
    if style == "check" and params is not None and len(params) == 1 and len(args) == 2:
        args = args[:1]  # get_assert(output) without the context
    if inspect.iscoroutinefunction(fn):
        return asyncio.run(fn(*args))
    result = fn(*args)
    if inspect.iscoroutine(result):
        return asyncio.run(result)
    return result


def _plain(value):
    """The result as JSON data (a DSPy Prediction or any object with score/pass: its fields)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    fields = {k: getattr(value, k) for k in ("pass_", "passed", "score", "reason", "feedback") if hasattr(value, k)}
    if fields:
        return _plain(fields)
    return str(value)


def _encode(value):
    # NaN and infinities are kept (JSON's NaN extension): the caller reports them
    return json.dumps({"ok": True, "value": _plain(value)}, ensure_ascii=False, allow_nan=True)


def _serve(stream, proto):
    for line in stream:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            value = _call(_function(request), request.get("args") or [], request.get("style"))
            reply = _encode(value)
        except SystemExit as exc:
            reply = json.dumps({"ok": False, "fault": "exit", "type": "SystemExit", "message": str(exc.code)})
        except Exception as exc:  # the user's code raised: the caller decides what it means
            reply = json.dumps(
                {
                    "ok": False,
                    "fault": "raised",
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "trace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:]),
                }
            )
        except BaseException as exc:  # KeyboardInterrupt, GeneratorExit... raised by the user's code
            reply = json.dumps({"ok": False, "fault": "base", "type": type(exc).__name__, "message": str(exc)})
        proto.write(reply + "\n")
        proto.flush()


def _end_with_parent(parent):
    """End this process, and what the user's code started (its process group, which it leads when
    the sandbox starts it), when the process that started it is gone. Its stdin closes then, but
    that is read only between requests: a check in an endless loop would keep a core busy forever
    after pytest was killed outright, its time limit being enforced by the process that is gone.
    A thread polls: a loop in Python code leaves it the interpreter every few milliseconds (a loop
    inside one C call does not)."""

    def watch():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                try:
                    os.killpg(os.getpid(), signal.SIGKILL)  # no such group unless it leads one
                except (AttributeError, OSError):
                    pass
                os._exit(1)

    threading.Thread(target=watch, name="promptopt-parent-watch", daemon=True).start()


def main():
    _end_with_parent(os.getppid())
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    os.dup2(2, 1)  # the user's prints (even from C) go to stderr, not into the protocol
    sys.stdout = sys.stderr
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # and input() reads nothing instead of the next request
    sys.stdin = open(os.devnull, encoding="utf-8")  # kept open for the process's life
    _block_network()
    proto.write('{"ready": true}\n')
    proto.flush()
    _serve(requests, proto)


if __name__ == "__main__":
    main()
