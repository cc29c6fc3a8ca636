"""Hosted models through litellm: OpenAI, Anthropic, Databricks serving, Ollama, vLLM, ..."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..gc_pause import paused_for_first_import
from ..redact import mask_credentials, scrub, without_secrets
from .base import ModelError, Request, Response, RetryableModelError

__all__ = ["LiteLLMModel", "env_api_key", "warm_up_litellm"]

_IMPORT_LOCK = threading.Lock()
_WARM_UP_LOCK = threading.Lock()
_warmed = False
# Parameters that change answers or where they come from; everything else litellm accepts
# passes through too, but secrets are refused (keys come from the environment only).
DEFAULT_TIMEOUT_S = 60.0
# Status codes worth another try; litellm's own hierarchy maps providers' faults onto them.
_RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504, 529}


def env_api_key(env: str | None, what: str) -> str | None:
    """The key in the environment variable named `env` (an `api_key_env` / `apiKeyEnvar`); None
    when no variable is named. `ModelError` when it is named but not set."""
    if not env:
        return None
    key = os.environ.get(str(env))
    if not key:
        raise ModelError(f"{what}: environment variable {env} is not set")
    return key


def _litellm() -> Any:
    with _IMPORT_LOCK:
        # litellm fetches its model price map from the network at import unless told not to;
        # CI machines are often offline, and the bundled map is enough for cost estimates.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            with paused_for_first_import("litellm"):
                import litellm
        except ImportError:
            raise ModelError("hosted models need litellm: pip install 'pytest-promptopt[litellm]'") from None
        litellm.telemetry = False
        litellm.suppress_debug_info = True
        return litellm


# litellm's callback lists: a user's logger (MLflow autolog, Langfuse, ...) would see the warm-up call
_CALLBACK_LISTS = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "service_callback",
    "_async_input_callback",
    "_async_success_callback",
    "_async_failure_callback",
)


def warm_up_litellm(model: str | None = None) -> None:
    """Load litellm and what its first call needs, once per process.

    The import takes seconds and litellm's first call loads more (its HTTP transport, the
    modules a completion goes through). Collection calls this (`LiteLLMModel.warm_up`) when a
    suite names a hosted model, so the first case does not wait for it: the cases then report
    from the start of the test loop, and under xdist every worker is ready when its first cases
    arrive. It is not done in a background thread: the import is CPU work under the GIL that
    collection shares, so it would overlap nothing, and pytest's per-test warning capture is
    process-wide, so the import's warnings would land on whichever test was running.
    """
    global _warmed
    with _WARM_UP_LOCK:
        if _warmed:
            return
        _warmed = True
        try:
            litellm = _litellm()
        except ModelError:  # not installed: the first call says so
            return
        try:
            import httpcore  # noqa: F401  (httpx's transport, else imported by the first request)
        except ImportError:
            pass
        if model and not any(getattr(litellm, name, None) for name in _CALLBACK_LISTS):
            # A mocked completion (no request is sent) loads most of the rest.
            try:
                litellm.completion(model=model, messages=[{"role": "user", "content": "warm-up"}], mock_response="ok")
            except Exception:  # an unknown provider and the like: the real call reports it
                pass


def _retryable(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status in _RETRYABLE_STATUS:
        return True
    # Timeouts and lost connections carry no usable status
    return type(exc).__name__ in {
        "Timeout",
        "APIConnectionError",
        "APITimeoutError",
        "ServiceUnavailableError",
        "InternalServerError",
    }


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
        self.route = model  # litellm's model string; a provider of ours may route through another (providers.py)
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

    def warm_up(self) -> None:
        """Load litellm now rather than at the first call (see `warm_up_litellm`)."""
        warm_up_litellm(self.route)

    def _api_key(self) -> str | None:
        """The key to send, or None to let litellm read the provider's usual variable."""
        return env_api_key(self.api_key_env, f"model {self.model}")

    def generate(self, request: Request) -> Response:
        litellm = _litellm()
        params = {**self.params, **request.params}
        key = self._api_key()
        if key:
            params["api_key"] = key
        started = time.perf_counter()
        try:
            reply = litellm.completion(
                model=self.route,
                messages=[dict(m) for m in request.messages],
                timeout=self.timeout,
                num_retries=0,
                max_retries=0,  # nor the provider SDK's own retries
                **params,
            )
        except Exception as exc:  # litellm raises its own hierarchy per provider
            # a provider's message may quote its URL, credentials and all (an mlflow-gateway server's)
            message = (
                f"model {self.model}: {type(exc).__name__}: {mask_credentials(scrub(str(exc), (key,) if key else ()))}"
            )
            if _retryable(exc):
                raise RetryableModelError(message, _retry_after(exc)) from None
            raise ModelError(message) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        choices = getattr(reply, "choices", None) or []
        if not choices:
            # A 200 whose body holds no answer (seen from proxies and content filters): a model
            # fault of this case, not worth a retry.
            raise ModelError(f"model {self.model}: the provider answered without any choice (empty 'choices')")
        message = getattr(choices[0], "message", None)
        text = getattr(message, "content", None) or ""
        if not isinstance(text, str):
            raise ModelError(f"model {self.model}: the provider's answer is not text ({type(text).__name__})")
        usage = getattr(reply, "usage", None)
        return Response(
            # a provider that reflects the request puts the key it was sent into its answer
            text=scrub(text, (key,) if key else ()),
            latency_ms=latency_ms,
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            cost=self._cost(litellm, reply),
            model=self.model,
        )

    @staticmethod
    def _cost(litellm: Any, reply: Any) -> float | None:
        hidden = getattr(reply, "_hidden_params", None) or {}
        if "response_cost" in hidden:
            # litellm priced the reply already (None: it knows no price for this model). Asking
            # again repeats its search of the price map, about 1 ms of CPU per call for a model
            # it does not know.
            cost = hidden["response_cost"]
        else:
            try:
                cost = litellm.completion_cost(completion_response=reply)
            except Exception:  # unknown price: the provider does not report cost
                return None
        return float(cost) if cost is not None else None
