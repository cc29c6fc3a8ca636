"""Limits on hosted model calls: rate limits per provider, and retries that honour Retry-After.

`Throttled` wraps a hosted model: every call first takes its share of the provider's requests-
and tokens-per-minute budget, and a retryable fault (429, 5xx, timeout, lost connection) is
retried with exponential backoff and full jitter, waiting at least what `Retry-After` asks.
Under pytest-xdist each worker takes 1/W of every budget, so W workers together stay within it.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..models.base import ModelError, Request, Response, RetryableModelError
from ..wording import counted

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_RETRIES",
    "RateLimit",
    "RateLimiter",
    "RetryPolicy",
    "RetryableModelError",
    "Throttled",
    "parse_rate_limits",
    "throttle",
]

DEFAULT_CONCURRENCY = 16
DEFAULT_RETRIES = 4


@dataclass(frozen=True)
class RateLimit:
    """A provider's budget per minute; `provider` is the model id's prefix (`openai` in
    `openai/gpt-4o-mini`), or `*` for every hosted provider without its own."""

    provider: str
    rpm: float | None = None
    tpm: float | None = None

    def share(self, parts: int) -> RateLimit:
        """One of `parts` equal shares (an xdist worker's)."""
        if parts <= 1:
            return self
        return RateLimit(self.provider, self.rpm / parts if self.rpm else None, self.tpm / parts if self.tpm else None)

    def describe(self) -> str:
        bits = [f"rpm={self.rpm:g}" if self.rpm else "", f"tpm={self.tpm:g}" if self.tpm else ""]
        return f"{self.provider}:{','.join(b for b in bits if b)}"


_ENTRY = re.compile(r"^\s*([A-Za-z0-9_.\-*]+)\s*:\s*(.+?)\s*$")


def parse_rate_limits(text: str) -> tuple[RateLimit, ...]:
    """`openai:rpm=500,tpm=30000; anthropic:rpm=50` (entries split by `;` or new lines)."""
    limits: dict[str, RateLimit] = {}
    for entry in re.split(r"[;\n]", text):
        if not entry.strip():
            continue
        match = _ENTRY.match(entry)
        if match is None:
            raise ValueError(f"{entry.strip()!r}: write provider:rpm=N,tpm=N, e.g. openai:rpm=500,tpm=30000")
        provider, body = match.group(1).lower(), match.group(2)
        values: dict[str, float] = {}
        for part in body.split(","):
            key, eq, raw = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in ("rpm", "tpm"):
                raise ValueError(f"{entry.strip()!r}: unknown limit {part.strip()!r}; use rpm=N and/or tpm=N")
            try:
                number = float(raw)
            except ValueError:
                raise ValueError(f"{entry.strip()!r}: {key} must be a number, got {raw.strip()!r}") from None
            if number <= 0:
                raise ValueError(f"{entry.strip()!r}: {key} must be positive")
            values[key] = number
        if provider in limits:
            raise ValueError(f"provider {provider!r} is given twice")
        limits[provider] = RateLimit(provider, values.get("rpm"), values.get("tpm"))
    return tuple(limits.values())


def provider_of(model_id: str) -> str:
    return model_id.split("/", 1)[0].lower() if "/" in model_id else model_id.lower()


def limit_for(limits: Sequence[RateLimit], model_id: str) -> RateLimit | None:
    by_provider = {limit.provider: limit for limit in limits}
    return by_provider.get(provider_of(model_id)) or by_provider.get("*")


class RateLimiter:
    """Sliding one-minute windows of requests and tokens, shared by the threads of a process.

    Tokens are only known after an answer, so a call reserves an estimate (the prompt's length / 4
    plus `max_tokens`) and the estimate is replaced by the provider's count when it answers.
    """

    WINDOW_S = 60.0

    def __init__(
        self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._requests: deque[float] = deque()
        self._tokens: deque[list[float]] = deque()  # [time, tokens], tokens corrected after the call
        self.waited_s = 0.0

    def acquire(self, estimated_tokens: float) -> list[float]:
        """Wait for room; returns the token reservation to pass to `settle`."""
        while True:
            with self._lock:
                now = self._clock()
                self._expire(now)
                wait = self._wait_for(now, estimated_tokens)
                if wait <= 0:
                    self._requests.append(now)
                    reservation = [now, float(estimated_tokens)]
                    self._tokens.append(reservation)
                    return reservation
            self.waited_s += wait
            self._sleep(wait)

    def settle(self, reservation: list[float], tokens: float | None) -> None:
        if tokens is not None:
            with self._lock:
                reservation[1] = float(tokens)

    def _expire(self, now: float) -> None:
        while self._requests and now - self._requests[0] >= self.WINDOW_S:
            self._requests.popleft()
        while self._tokens and now - self._tokens[0][0] >= self.WINDOW_S:
            self._tokens.popleft()

    def _wait_for(self, now: float, estimated_tokens: float) -> float:
        waits = [0.0]
        if self.limit.rpm and len(self._requests) + 1 > self.limit.rpm:
            # the oldest requests must leave the window first
            excess = int(len(self._requests) + 1 - self.limit.rpm)
            waits.append(self._requests[excess - 1] + self.WINDOW_S - now)
        if self.limit.tpm and self._tokens:
            used = sum(t for _, t in self._tokens)
            # a single call larger than the budget still runs, alone in its window
            budget = max(self.limit.tpm, estimated_tokens)
            if used + estimated_tokens > budget:
                freed = 0.0
                for when, tokens in self._tokens:
                    freed += tokens
                    if used - freed + estimated_tokens <= budget:
                        waits.append(when + self.WINDOW_S - now)
                        break
        return max(waits) + (0.001 if max(waits) > 0 else 0.0)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter (base 2^attempt seconds, capped), never shorter than
    the provider's Retry-After."""

    retries: int = DEFAULT_RETRIES
    base_s: float = 0.5
    cap_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer Retry-After is a quota, not a hiccup: give up

    def delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random) -> float:
        backoff = min(self.cap_s, self.base_s * (2**attempt)) * rand()
        if retry_after is not None and retry_after > 0:
            return max(backoff, retry_after)
        return backoff


def estimate_tokens(request: Request) -> float:
    text = sum(len(m.get("content", "")) for m in request.messages)
    return text / 4 + float(request.params.get("max_tokens") or 256)


def throttle(model: Any, default_retries: int, limiter: RateLimiter | None = None) -> Throttled:
    """A hosted model behind a limiter and retries: its provider's `num_retries` if set, else
    the run's."""
    retries = default_retries if getattr(model, "retries", None) is None else model.retries
    return Throttled(model, RetryPolicy(retries), limiter)


class Throttled:
    """A hosted model behind a rate limiter and a retry policy; otherwise the same model (its
    name and cache identity pass through, so cache keys do not change)."""

    concurrent = True  # calls wait on the network: the runner may overlap them

    def __init__(
        self,
        model: Any,
        policy: RetryPolicy,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.name = model.name
        self.policy = policy
        self.limiter = limiter
        self._sleep = sleep
        self.retried = 0

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return self.model.cache_identity

    @property
    def cacheable(self) -> bool:
        return getattr(self.model, "cacheable", True)

    def warm_up(self) -> None:
        warm_up = getattr(self.model, "warm_up", None)
        if callable(warm_up):
            warm_up()

    def generate(self, request: Request) -> Response:
        attempt = 0
        while True:
            reservation = self.limiter.acquire(estimate_tokens(request)) if self.limiter else None
            try:
                response = self.model.generate(request)
            except RetryableModelError as exc:
                if self.limiter and reservation is not None:
                    self.limiter.settle(reservation, 0)
                too_long = exc.retry_after is not None and exc.retry_after > self.policy.max_retry_after_s
                if attempt >= self.policy.retries or too_long:
                    raise ModelError(f"{exc} (gave up after {counted(attempt + 1, 'attempt')})") from None
                self._sleep(self.policy.delay(attempt, exc.retry_after))
                attempt += 1
                self.retried += 1
                continue
            if self.limiter and reservation is not None:
                used = (response.prompt_tokens or 0) + (response.completion_tokens or 0)
                self.limiter.settle(reservation, used or None)
            return response
