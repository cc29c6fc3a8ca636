"""The model protocol: one request in, one response out.

Every adapter (bundled SmolLM2, litellm, echo, scripted fake) implements `Model`. Requests and
responses are plain data so they can be cached, sent across xdist workers or Spark rows, and
compared in tests.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Message = Mapping[str, str]  # {"role": "user" | "system" | "assistant", "content": "..."}


class ModelError(RuntimeError):
    """A model could not answer (unreachable, timed out, refused, misconfigured).

    Reported as a pytest *error*, never as a failed assertion.
    """


class RetryableModelError(ModelError):
    """A fault worth retrying (429, 5xx, timeout, connection); `retry_after` is the provider's
    Retry-After in seconds, when it sent one (runners/limits.py retries it)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Request:
    """What is sent to a model: chat messages plus generation parameters.

    `prompt` is the rendered prompt text exactly as the template produced it; adapters that
    echo or log the prompt use it, chat adapters use `messages`.
    """

    prompt: str
    messages: tuple[Mapping[str, str], ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    # Which independent sample of this request (0 .. N-1 with --promptopt-repeat N): the cache
    # keeps each apart, and a sampling adapter may use it (the bundled model adds it to its seed).
    # Not a generation parameter, so repeat 0 has the cache key of a run without repeats.
    repeat: int = 0

    @classmethod
    def from_prompt(cls, prompt: str | Sequence[Message], params: Mapping[str, Any] | None = None) -> Request:
        """Build a request from a prompt string or a list of chat messages.

        A string that is a JSON list of `{"role", "content"}` objects is read as chat messages,
        as promptfoo does for chat-format prompts.
        """
        params = dict(params or {})
        if isinstance(prompt, str):
            messages = _chat_messages(prompt)
            if messages is None:
                messages = ({"role": "user", "content": prompt},)
            return cls(prompt=prompt, messages=messages, params=params)
        messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in prompt)
        return cls(prompt=json.dumps(list(messages), ensure_ascii=False), messages=messages, params=params)


def _chat_messages(text: str) -> tuple[dict[str, str], ...] | None:
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        data = json.loads(stripped)
    except ValueError:
        return None
    if not data or not all(isinstance(m, dict) and "role" in m and "content" in m for m in data):
        return None
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in data)


@dataclass(frozen=True)
class Response:
    """A model's answer: the text plus what it cost.

    `str(response)` is the text, so a response can be passed wherever an output string is expected.
    """

    text: str
    latency_ms: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    cached: bool = False
    model: str = ""
    # Requests answered by the same model call (1: its own call). A batch's answers share its
    # forward passes: `latency_ms` is then the time until this answer was complete in the batch.
    batch_size: int = 1

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Response:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@runtime_checkable
class Model(Protocol):
    """What every model adapter provides.

    `name` identifies the model in reports; `cache_identity` identifies everything that changes
    its answers (model id, weights, decoding defaults) and never contains a secret.
    """

    name: str

    @property
    def cache_identity(self) -> Mapping[str, Any]: ...

    def generate(self, request: Request) -> Response: ...


# What an adapter's long wait is for ("preparing the bundled model ..."): records of this logger
# that carry `promptopt_status=True`; the progress line of a run shows them as they come.
STATUS_LOGGER = "pytest_promptopt.status"


def announce(message: str) -> None:
    """Say what a long wait is for (shown live by the progress line of a run in one process)."""
    logging.getLogger(STATUS_LOGGER).info(message, extra={"promptopt_status": True})


_AHEAD: contextvars.ContextVar[bool] = contextvars.ContextVar("promptopt_answering_ahead", default=False)


@contextlib.contextmanager
def answering_ahead() -> Iterator[None]:
    """Mark the model calls made inside as answers for cases pytest has not reached yet (the
    runner's look-ahead), as opposed to a call a test is waiting on now. A model with fewer
    workers than callers may let the waited-on calls go first (models/replica_turns.py)."""
    token = _AHEAD.set(True)
    try:
        yield
    finally:
        _AHEAD.reset(token)


def is_answering_ahead() -> bool:
    """Whether the current call is the look-ahead's (`answering_ahead`)."""
    return _AHEAD.get()
