"""Deterministic models for plumbing tests: `EchoModel` and the scripted `FakeModel`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .base import ModelError, Request, Response

__all__ = ["EchoModel", "FakeModel"]


class EchoModel:
    """Answers with the rendered prompt, exactly as promptfoo's `echo` provider does."""

    name = "echo"

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return {"model": "echo"}

    cacheable = False  # echoing is instant and exact: a cache would only add I/O

    def generate(self, request: Request) -> Response:
        return Response(
            text=request.prompt, latency_ms=0.0, prompt_tokens=0, completion_tokens=0, cost=0.0, model=self.name
        )


Script = Mapping[str, "str | Sequence[str]"] | Callable[[Request], "str | Response"]


class FakeModel:
    """A scripted model: answers from a mapping (prompt text -> answer) or a function.

    Like httpx's `MockTransport`, it lets a test decide every answer:

    >>> model = FakeModel({"What is 2+2?": "4"})
    >>> model.generate(Request.from_prompt("What is 2+2?")).text
    '4'

    A mapping is looked up by the whole rendered prompt, then by the last user message. A prompt
    the script does not know raises `ModelError` (reported as an error) unless `default` is set.
    A function may raise `ModelError` itself to simulate an outage.

    A list of answers answers repeated samples in turn (`request.repeat`, see --promptopt-repeat),
    so a flaky model is scripted without giving up the cache:

    >>> flaky = FakeModel({"Capital of Italy?": ["Rome", "Milan"]})
    >>> [flaky.generate(Request("Capital of Italy?", (), repeat=r)).text for r in range(3)]
    ['Rome', 'Milan', 'Rome']
    """

    def __init__(
        self, script: Script, *, default: str | None = None, name: str = "fake", latency_ms: float = 0.0
    ) -> None:
        if not callable(script):
            empty = [key for key, answer in script.items() if not isinstance(answer, str) and not answer]
            if empty:
                raise ModelError(f"{name}: the list of answers for prompt {empty[0][:200]!r} is empty")
        self.script = script
        self.default = default
        self.name = name
        self.latency_ms = latency_ms
        self.calls: list[Request] = []

    @property
    def cacheable(self) -> bool:
        # A function's answers cannot be fingerprinted, so caching them would hide script changes.
        return not callable(self.script)

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        script = None if callable(self.script) else sorted(self.script.items())
        return {"model": self.name, "script": script, "default": self.default}

    def generate(self, request: Request) -> Response:
        self.calls.append(request)
        if callable(self.script):
            answer = self.script(request)
        else:
            answer = self._lookup(request)
        if isinstance(answer, Response):
            return answer
        text = str(answer)
        return Response(
            text=text,
            latency_ms=self.latency_ms,
            prompt_tokens=len(request.prompt.split()),
            completion_tokens=len(text.split()),
            cost=0.0,
            model=self.name,
        )

    def _lookup(self, request: Request) -> str:
        assert not callable(self.script)
        users = [m["content"] for m in request.messages if m.get("role") == "user"]
        for key in (request.prompt, users[-1] if users else None):
            if key is not None and key in self.script:
                answer = self.script[key]
                if isinstance(answer, str):
                    return answer
                # By the sample's index, not by call count: the same answer in any process or order.
                return str(answer[request.repeat % len(answer)])
        if self.default is not None:
            return self.default
        raise ModelError(f"{self.name}: no scripted answer for prompt {request.prompt[:200]!r}")
