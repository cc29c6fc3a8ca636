"""Hosted models through litellm: OpenAI, Anthropic, Databricks serving, Ollama, vLLM, ..."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

from ..redact import scrub, without_secrets
from ..runners.limits import RetryableModelError
from .base import ModelError, Request, Response

__all__ = ["LiteLLMModel"]

_IMPORT_LOCK = threading.Lock()
# Parameters that change answers or where they come from; everything else litellm accepts
# passes through too, but secrets are refused (keys come from the environment only).
DEFAULT_TIMEOUT_S = 60.0
# Status codes worth another try; litellm's own hierarchy maps providers' faults onto them.
_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


def _litellm() -> Any:
    with _IMPORT_LOCK:
        # litellm fetches its model price map from the network at import unless told not to;
        # CI machines are often offline, and the bundled map is enough for cost estimates.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            import litellm
        except ImportError:
            raise ModelError("hosted models need litellm: pip install 'pytest-promptopt[litellm]'") from None
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        return litellm


def _retryable(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status in _RETRYABLE_STATUS:
        return True
    # Timeouts and lost connections carry no usable status
    return type(exc).__name__ in {"Timeout", "APIConnectionError", "APITimeoutError", "ServiceUnavailableError", "InternalServerError"}


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date), if the provider sent one."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    if not headers:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    raw = headers.get("retry-after") if headers is not None else None
    if raw in (None, ""):
        return None
    try:
        return max(0.0, float(raw))
    except (TypeError, ValueError):
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(str(raw)).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


class LiteLLMModel:
    """Any provider litellm knows, by its model string (`openai/gpt-4o-mini`, `ollama/llama3`, ...).

    API keys are read from the provider's usual environment variables (`OPENAI_API_KEY`, ...), or
    from the variable named by the `api_key_env` parameter; a key written into a suite is refused.
    """

    def __init__(self, model: str, params: Mapping[str, Any] | None = None) -> None:
        params = dict(params or {})
        for key in params:
            if key in {"api_key", "key", "token", "authorization"} or (key != "api_key_env" and "secret" in key):
                raise ModelError(
                    f"model {model}: '{key}' must not be written in a suite or config; "
                    "set the provider's environment variable (e.g. OPENAI_API_KEY) or name one with 'api_key_env'"
                )
        self.model = model
        self.name = model
        self.timeout = float(params.pop("timeout", DEFAULT_TIMEOUT_S))
        # Retries happen around this adapter (runners/limits.py: backoff, Retry-After, rate
        # limits); a provider's `num_retries` overrides --promptopt-retries for that provider.
        retries = params.pop("num_retries", params.pop("retries", None))
        self.retries = None if retries is None else int(retries)
        self.api_key_env = params.pop("api_key_env", None)
        self.params = params

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return {"model": self.model, "params": without_secrets(self.params)}

    def generate(self, request: Request) -> Response:
        litellm = _litellm()
        params = {**self.params, **request.params}
        key = None
        if self.api_key_env:
            key = os.environ.get(str(self.api_key_env))
            if not key:
                raise ModelError(f"model {self.model}: environment variable {self.api_key_env} is not set")
            params["api_key"] = key
        started = time.perf_counter()
        try:
            reply = litellm.completion(
                model=self.model,
                messages=[dict(m) for m in request.messages],
                timeout=self.timeout,
                num_retries=0,
                max_retries=0,  # nor the provider SDK's own retries
                **params,
            )
        except Exception as exc:  # litellm raises its own hierarchy per provider
            message = f"model {self.model}: {type(exc).__name__}: {scrub(str(exc), (key,) if key else ())}"
            if _retryable(exc):
                raise RetryableModelError(message, _retry_after(exc)) from None
            raise ModelError(message) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        choice = reply.choices[0]
        text = choice.message.content or ""
        usage = getattr(reply, "usage", None)
        return Response(
            text=text,
            latency_ms=latency_ms,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost=self._cost(litellm, reply),
            model=self.model,
        )

    @staticmethod
    def _cost(litellm: Any, reply: Any) -> float | None:
        hidden = getattr(reply, "_hidden_params", None) or {}
        cost = hidden.get("response_cost")
        if cost is None:
            try:
                cost = litellm.completion_cost(completion_response=reply)
            except Exception:  # unknown price: the provider does not report cost
                return None
        return float(cost) if cost is not None else None
