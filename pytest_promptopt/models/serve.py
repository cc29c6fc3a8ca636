"""An OpenAI-compatible HTTP API over any model adapter (`python -m pytest_promptopt serve`).

`GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (also without the
`/v1` prefix), with `stream: true` as server-sent events, over the plugin's own `Model`
protocol: the bundled SmolLM2 answers MLflow's Playground through an AI Gateway endpoint
(mlflow/gateway.py), and any client that speaks OpenAI can call `echo` or a litellm model.

The adapters answer a whole request at once, so a stream carries the answer in one content
chunk. Requests run on their own threads; an adapter that needs its calls serialised does it
itself (the bundled model holds a lock around generation). Bad requests get OpenAI's error shape
with status 400 (404 for an unknown model, as OpenAI answers), and a model fault a 500 (503 when
worth retrying) whose message has no secret in it.

Built on the standard library's `ThreadingHTTPServer`: a tool for one machine or a trusted
network, not a production inference server.
"""

from __future__ import annotations

import hmac
import json
import math
import socket
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from ..redact import scrub
from .base import Model, ModelError, Request, Response

__all__ = ["BadRequest", "Call", "ModelServer", "chat_call", "completion_call", "make_server"]

MAX_BODY = 8 * 1024 * 1024
_ROLES = {"system", "user", "assistant", "developer", "tool"}


class BadRequest(Exception):
    """A request the API refuses: OpenAI's error shape, with the HTTP status to send."""

    def __init__(self, message: str, param: str | None = None, *, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Call:
    """One parsed API call: the adapter request and how to answer it."""

    request: Request
    model: str | None
    stream: bool = False
    include_usage: bool = False


# ---------------------------------------------------------------------------------- parsing


def _number(body: Mapping[str, Any], key: str, low: float, high: float, *, low_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (low_open and value == low):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise BadRequest(f"'{key}' must be a number in {bound}, got {json.dumps(value)}", key)
    return float(value)


def _integer(body: Mapping[str, Any], key: str, low: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        wanted = "an integer" if low is None else f"an integer >= {low}"
        raise BadRequest(f"'{key}' must be {wanted}, got {json.dumps(value)}", key)
    return value


def _params(body: Mapping[str, Any]) -> dict[str, Any]:
    """The generation parameters the adapters take; OpenAI's other fields are ignored."""
    params: dict[str, Any] = {}
    max_tokens = _integer(body, "max_tokens", 1)
    newer = _integer(body, "max_completion_tokens", 1)  # the newer name of the same limit
    if max_tokens is not None or newer is not None:
        params["max_tokens"] = max_tokens if max_tokens is not None else newer
    for key, value in (
        ("temperature", _number(body, "temperature", 0.0, 2.0)),
        ("top_p", _number(body, "top_p", 0.0, 1.0, low_open=True)),
        ("seed", _integer(body, "seed")),
    ):
        if value is not None:
            params[key] = value
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("'stop' must be a non-empty string or a list of non-empty strings", "stop")
        if stop:
            params["stop"] = stop
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequest("only n=1 is supported", "n")
    return params


def _common(body: Any) -> tuple[str | None, bool, bool]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string", "model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return model, stream, bool(options.get("include_usage"))


def _content(value: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (images are refused)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(
                    f"{where}[{j}]: only text parts ({{'type': 'text', 'text': ...}}) are supported", "messages"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest(f"{where} must be a string or a list of text parts", "messages")


def chat_call(body: Any) -> Call:
    """A `/v1/chat/completions` body as a `Call`; `BadRequest` when it is not one."""
    model, stream, include_usage = _common(body)
    messages = body.get("messages")
    if messages is None:
        raise BadRequest("'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content} objects", "messages")
    for key in ("tools", "functions"):
        if body.get(key):
            raise BadRequest(f"'{key}' (tool calling) is not supported by this server", key)
    response_format = body.get("response_format")
    if response_format is not None and (not isinstance(response_format, dict) or response_format.get("type") != "text"):
        raise BadRequest("only response_format {'type': 'text'} is supported", "response_format")
    parsed = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object with 'role' and 'content'", "messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequest(f"{where}.role must be one of {', '.join(sorted(_ROLES))}", "messages")
        if "content" not in message:
            raise BadRequest(f"{where}.content is required", "messages")
        role = "system" if role == "developer" else role
        parsed.append({"role": role, "content": _content(message["content"], f"{where}.content")})
    params = _params(body)
    if len(parsed) == 1 and parsed[0]["role"] == "user":
        # One user turn: the prompt is its text, as a suite's plain prompt would be.
        text = parsed[0]["content"]
        request = Request(prompt=text, messages=(parsed[0],), params=params)
    else:
        request = Request(prompt=json.dumps(parsed, ensure_ascii=False), messages=tuple(parsed), params=params)
    return Call(request, model, stream, include_usage)


def completion_call(body: Any) -> Call:
    """A `/v1/completions` body as a `Call`: the prompt is sent as one user turn (the adapters
    are chat models)."""
    model, stream, include_usage = _common(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise BadRequest("'prompt' is required", "prompt")
    if not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string (or a list of one string)", "prompt")
    if body.get("echo"):
        raise BadRequest("'echo' is not supported", "echo")
    message = {"role": "user", "content": prompt}
    return Call(Request(prompt=prompt, messages=(message,), params=_params(body)), model, stream, include_usage)


# --------------------------------------------------------------------------------- answering


def _usage(response: Response) -> dict[str, int]:
    prompt = int(response.prompt_tokens or 0)
    completion = int(response.completion_tokens or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(call: Call, response: Response) -> str:
    limit = call.request.params.get("max_tokens")
    if limit is not None and response.completion_tokens is not None and response.completion_tokens >= limit:
        return "length"
    return "stop"


def _answer(kind: str, call: Call, response: Response, name: str) -> dict[str, Any]:
    reason = _finish_reason(call, response)
    head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time())}
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": response.text},
            "logprobs": None,
            "finish_reason": reason,
        }
        return {**head, "object": "chat.completion", "model": name, "choices": [choice], "usage": _usage(response)}
    choice = {"index": 0, "text": response.text, "logprobs": None, "finish_reason": reason}
    return {**head, "object": "text_completion", "model": name, "choices": [choice], "usage": _usage(response)}


def _chunks(kind: str, call: Call, response: Response, name: str) -> list[dict[str, Any]]:
    """The stream of one whole answer: its text in one chunk, then the finish reason (and the
    usage when `stream_options.include_usage` asked for it)."""
    head = {"id": f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time())}
    reason = _finish_reason(call, response)
    if kind == "chat":
        base = {**head, "object": "chat.completion.chunk", "model": name}

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        chunks = [chunk({"role": "assistant", "content": ""}, None), chunk({"content": response.text}, None)]
        chunks.append(chunk({}, reason))
    else:
        base = {**head, "object": "text_completion", "model": name}
        chunks = [
            {**base, "choices": [{"index": 0, "text": response.text, "logprobs": None, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": reason}]},
        ]
    if call.include_usage:
        chunks.append({**base, "choices": [], "usage": _usage(response)})
    return chunks


# ---------------------------------------------------------------------------------- the server


class ModelServer(ThreadingHTTPServer):
    """Serves one model under one name; `base_url` is what an OpenAI client takes."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        model: Model,
        name: str,
        *,
        api_key: str | None = None,
        log: TextIO | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.model = model
        self.name = name
        self.api_key = api_key
        self.log = log
        self.started = int(time.time())

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}/v1"

    def answer(self, call: Call) -> Response:
        if call.model is not None and call.model != self.name:
            raise BadRequest(
                f"The model '{call.model}' does not exist; this server serves '{self.name}'",
                "model",
                status=404,
                code="model_not_found",
            )
        try:
            return self.model.generate(call.request)
        except ModelError as exc:
            # The parameters were checked above, so this is the model's fault; a retryable one
            # (runners.limits.RetryableModelError: a 429 or 5xx upstream) says so with a 503.
            retry = hasattr(exc, "retry_after")
            raise BadRequest(scrub(str(exc)), status=503 if retry else 500, code="model_error") from None


class _Handler(BaseHTTPRequestHandler):
    server: ModelServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's and OpenAI's clients expect
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.log is not None:
            self.server.log.write(f"{self.address_string()} {format % args}\n")
            self.server.log.flush()

    # ------------------------------------------------------------------ routes

    def do_GET(self) -> None:
        path = self._path()
        if path in {"/health", "/v1/health"}:
            self._json(200, {"status": "ok"})
        elif not self._authorised():
            return
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [self._model_card()]})
        elif path == f"/v1/models/{self.server.name}":
            self._json(200, self._model_card())
        elif path.startswith("/v1/models/"):
            missing = path[len("/v1/models/") :]
            self._error(
                BadRequest(f"The model '{missing}' does not exist", "model", status=404, code="model_not_found")
            )
        else:
            self._error(BadRequest(f"no route GET {path}", status=404, code="not_found"))

    def do_POST(self) -> None:
        path = self._path()
        kind = {"/v1/chat/completions": "chat", "/v1/completions": "text"}.get(path)
        if kind is None:
            self._drain()
            self._error(BadRequest(f"no route POST {path}", status=404, code="not_found"))
            return
        if not self._authorised():
            return
        try:
            body = self._body()
            call = chat_call(body) if kind == "chat" else completion_call(body)
            response = self.server.answer(call)
        except BadRequest as exc:
            self._error(exc)
            return
        if call.stream:
            self._stream(_chunks(kind, call, response, self.server.name))
        else:
            self._json(200, _answer(kind, call, response, self.server.name))

    # ------------------------------------------------------------------ helpers

    def _path(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if not path.startswith("/v1/") and path.startswith(("/chat/", "/completions", "/models")):
            path = "/v1" + path  # a client given the server's root as its base URL
        return path

    def _model_card(self) -> dict[str, Any]:
        return {
            "id": self.server.name,
            "object": "model",
            "created": self.server.started,
            "owned_by": "pytest-promptopt",
        }

    def _authorised(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if hmac.compare_digest(token.encode(), key.encode()):
            return True
        self._drain()
        self._error(
            BadRequest("a valid API key is required (Authorization: Bearer ...)", status=401, code="invalid_api_key")
        )
        return False

    def _drain(self) -> None:
        """Read an unread body so the kept-alive connection stays in step."""
        length = self.headers.get("Content-Length")
        if length and length.isdigit() and int(length) <= MAX_BODY:
            self.rfile.read(int(length))
        elif length:
            self.close_connection = True

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise BadRequest("a request body with a Content-Length is required")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise BadRequest(f"the request body is larger than {MAX_BODY} bytes", status=413)
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, exc: BadRequest) -> None:
        self._json(exc.status, exc.body())

    def _stream(self, chunks: Sequence[Mapping[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # no length: the stream ends with the connection
        self.end_headers()
        self.close_connection = True
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(
    model: Model,
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str | None = None,
    log: TextIO | None = sys.stderr,
) -> ModelServer:
    """A bound (not yet serving) server; port 0 picks a free port (see `base_url`).

    >>> from pytest_promptopt.models.fakes import EchoModel
    >>> server = make_server(EchoModel(), "echo", log=None)
    >>> server.base_url.startswith("http://127.0.0.1:")
    True
    >>> server.server_close()
    """
    return ModelServer((host, port), model, name, api_key=api_key, log=log)
