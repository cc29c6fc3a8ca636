"""The OpenAI API's requests as the model server reads them: chat and completion bodies parsed
and checked into adapter `Request`s, and the error a refused request gets (OpenAI's error shape
with the HTTP status to send). models/serve.py answers them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import Request

__all__ = ["BadRequest", "Call", "chat_call", "completion_call"]

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
