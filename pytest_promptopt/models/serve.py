"""An OpenAI-compatible HTTP API over any model adapter (`python -m pytest_promptopt serve`).

`GET /v1/models`, `POST /v1/chat/completions` and `POST /v1/completions` (also without the
`/v1` prefix), with `stream: true` as server-sent events, over the plugin's own `Model`
protocol: the bundled SmolLM2 answers MLflow's Playground through an AI Gateway endpoint
(mlflow/gateway.py), and any client that speaks OpenAI can call `echo` or a litellm model.

The adapters answer a whole request at once, so a stream carries the answer in one content
chunk. Requests run on their own threads; an adapter that needs its calls serialised does it
itself (the bundled model holds a lock around generation). Bad requests (parsed in
models/openai_requests.py) get OpenAI's error shape
with status 400 (404 for an unknown model, as OpenAI answers), and a model fault a 500 (503 when
worth retrying) whose message has no secret in it.

Built on the standard library's `ThreadingHTTPServer`: a tool for one machine or a trusted
network, not a production inference server.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO

from ..redact import scrub
from .base import Model, ModelError, Response
from .openai_requests import BadRequest, Call, chat_call, completion_call

__all__ = ["ModelServer", "make_server"]

MAX_BODY = 8 * 1024 * 1024
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
