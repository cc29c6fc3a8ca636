"""MLflow's AI Gateway (built into `mlflow server` 3.x): registering an OpenAI-compatible model
server as a gateway endpoint, so MLflow's Playground (and `mlflow-gateway:<endpoint>` suites)
can call it, and calling an endpoint.

The gateway's REST API (mlflow/server/handlers.py, `/api/3.0/mlflow/gateway/...`) stores three
things: a *secret* (the upstream's API key, encrypted, with the upstream's `api_base`), a *model
definition* (provider `openai`, the upstream's model name, the secret) and an *endpoint* (a name
routed to model definitions). `register_endpoint` writes the three under names derived from the
endpoint's, updating what is there, so running it again changes the endpoint instead of adding
another. Clients then call `POST <server>/gateway/mlflow/v1/chat/completions` with
`{"model": "<endpoint>", "messages": [...]}`, as the Playground does.

The tracking server checks an upstream's URL when the secret is written and again on every call:
a loopback or private upstream needs the server *process* started with
`MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES=http,https` and `MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS=true`
(`SERVER_ENV`); a refusal comes back as a `GatewayError` carrying that hint.

Plain HTTP through urllib (no mlflow import), with MLflow's client credentials from the
environment: `MLFLOW_TRACKING_TOKEN` (Bearer) or `MLFLOW_TRACKING_USERNAME`/`_PASSWORD` (Basic).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .client import safe_text, safe_uri

__all__ = [
    "SERVER_ENV",
    "GatewayError",
    "Registered",
    "chat",
    "gateway_base",
    "playground_url",
    "register_endpoint",
    "upstream_models",
]

# What the `mlflow server` process needs for a gateway endpoint whose upstream is on loopback or a
# private network, offline (the last: litellm's price map from its own package, not from GitHub;
# else each server worker waits ~8 s on its first call).
SERVER_ENV = {
    "MLFLOW_GATEWAY_API_BASE_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_GATEWAY_API_BASE_ALLOW_PRIVATE_IPS": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
}
_API = "/api/3.0/mlflow/gateway"
_PRIVATE_HINT = (
    "the tracking server refuses a plain-HTTP or private-network upstream by default; restart "
    "`mlflow server` with "
    + " ".join(f"{k}={v}" for k, v in SERVER_ENV.items() if k.startswith("MLFLOW_"))
    + " in its environment (it checks the upstream on every call, so the server process needs them)"
)
_STORE_HINT = "the AI Gateway needs a SQL store: start `mlflow server --backend-store-uri sqlite:///mlflow.db`"
_DISABLED_HINT = "the server's AI Gateway is off: unset MLFLOW_ENABLE_AI_GATEWAY=false in its environment"
_MISSING_HINT = "this server has no AI Gateway API (MLflow 3.x `mlflow server` with a SQL store has one)"


class GatewayError(RuntimeError):
    """A gateway call failed; `hint` says what to change, when we know."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message if hint is None else f"{message}\nhint: {hint}")
        self.message = message
        self.hint = hint
        self.status = status


@dataclass(frozen=True)
class Registered:
    """What `register_endpoint` left on the server."""

    tracking_uri: str
    endpoint: str
    endpoint_id: str
    model_definition_id: str
    secret_id: str
    api_base: str
    model_name: str
    created: bool  # False: an endpoint of that name was there and now routes to this upstream

    def describe(self) -> str:
        action = "created" if self.created else "updated"
        return (
            f"gateway endpoint '{self.endpoint}' {action} on {safe_uri(self.tracking_uri)}: "
            f"model '{self.model_name}' at {safe_uri(self.api_base)}"
        )


def gateway_base(tracking_uri: str) -> str:
    """The OpenAI-compatible base URL of a tracking server's gateway (what an OpenAI client takes)."""
    return f"{_server_root(tracking_uri)}/gateway/mlflow/v1"


def playground_url(tracking_uri: str, experiment_id: str = "0") -> str:
    """Where a user opens the Playground (it lives in an experiment; 0 is "Default")."""
    return f"{_server_root(tracking_uri)}/#/experiments/{experiment_id}/playground"


def _server_root(tracking_uri: str) -> str:
    uri = (tracking_uri or "").strip().rstrip("/")
    if not uri:
        raise GatewayError(
            "no tracking server named", "pass --tracking-uri http://host:port or set MLFLOW_TRACKING_URI"
        )
    if not uri.startswith(("http://", "https://")):
        raise GatewayError(
            f"{safe_uri(uri)} is not a tracking server",
            "the AI Gateway lives in `mlflow server`; pass its http(s) URL (--tracking-uri or $MLFLOW_TRACKING_URI), "
            "e.g. http://127.0.0.1:5000 after `mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000`",
        )
    return uri


def _auth_headers() -> dict[str, str]:
    """MLflow's client credentials, as its REST client sends them."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _hint(message: str, status: int | None) -> str | None:
    if "non-public IP" in message or "not a public IP" in message or "Allowed schemes are" in message:
        return _PRIVATE_HINT
    if "only available with SqlAlchemyStore" in message:
        return _STORE_HINT
    if "AI Gateway is disabled" in message or "MLFLOW_ENABLE_AI_GATEWAY" in message:
        return _DISABLED_HINT
    return None


def _request(
    url: str,
    method: str = "GET",
    body: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    sent = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        sent["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    where = f"{method} {safe_uri(url.split('?', 1)[0])}"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        message = _error_message(raw) or exc.reason or "no details"
        status = exc.code
        hint = _hint(message, status)
        if hint is None and status == 404 and _API in url and "RESOURCE_DOES_NOT_EXIST" not in message:
            hint = _MISSING_HINT  # the route itself is unknown
        raise GatewayError(f"{where}: HTTP {status}: {safe_text(message)}", hint, status) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GatewayError(f"{where}: cannot reach the server: {safe_text(str(reason))}") from None
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise GatewayError(
            f"{where}: the answer is not JSON: {safe_text(raw[:200].decode(errors='replace'))}"
        ) from None


def _error_message(raw: bytes) -> str:
    """The message of an MLflow (`{"error_code", "message"}`), FastAPI (`{"detail": ...}`) or
    OpenAI (`{"error": {"message"}}`) error body."""
    try:
        data = json.loads(raw)
    except ValueError:
        return " ".join(raw.decode(errors="replace").split())[:400]
    if isinstance(data, dict):
        detail = data.get("detail", data.get("error", data))
        if isinstance(detail, dict):
            code = detail.get("error_code") or detail.get("code")
            message = detail.get("message") or json.dumps(detail)
            return f"{code}: {message}" if code and code not in str(message) else str(message)
        return str(detail)
    return str(data)[:400]


class _Api:
    def __init__(self, tracking_uri: str, timeout: float) -> None:
        self.root = _server_root(tracking_uri)
        self.headers = _auth_headers()
        self.timeout = timeout

    def get(self, what: str, **query: str) -> dict[str, Any]:
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return _request(f"{self.root}{_API}/{what}{suffix}", headers=self.headers, timeout=self.timeout)

    def post(self, what: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return _request(f"{self.root}{_API}/{what}", "POST", body, headers=self.headers, timeout=self.timeout)


def register_endpoint(
    tracking_uri: str,
    endpoint: str,
    api_base: str,
    model_name: str,
    *,
    api_key: str | None = None,
    usage_tracking: bool = False,
    timeout: float = 30.0,
) -> Registered:
    """Make gateway endpoint `endpoint` route to the OpenAI-compatible `api_base` serving
    `model_name` (secret and model definition `promptopt-<endpoint>`); update them when present.

    `api_key` is what the gateway sends upstream as a Bearer token (a placeholder when None: the
    gateway's OpenAI provider needs one). `usage_tracking` off keeps the gateway from creating a
    `gateway/<endpoint>` experiment with a trace per call.
    """
    api = _Api(tracking_uri, timeout)
    own = f"promptopt-{endpoint}"
    secret = {
        "secret_value": {"api_key": api_key or "unused"},
        "auth_config": {"api_base": api_base},
    }
    found = _named(api.get("secrets/list").get("secrets", []), "secret_name", own)
    if found is None:
        made = api.post("secrets/create", {"secret_name": own, "provider": "openai", **secret})
    else:
        made = api.post("secrets/update", {"secret_id": found["secret_id"], **secret})
    secret_id = made["secret"]["secret_id"]

    definition = {"secret_id": secret_id, "provider": "openai", "model_name": model_name}
    found = _named(api.get("model-definitions/list").get("model_definitions", []), "name", own)
    if found is None:
        made = api.post("model-definitions/create", {"name": own, **definition})
    else:
        made = api.post("model-definitions/update", {"model_definition_id": found["model_definition_id"], **definition})
    definition_id = made["model_definition"]["model_definition_id"]

    route = {
        "model_configs": [{"model_definition_id": definition_id, "linkage_type": "PRIMARY", "weight": 1}],
        "usage_tracking": usage_tracking,
    }
    try:
        existing = api.get("endpoints/get", name=endpoint).get("endpoint")
    except GatewayError as exc:
        if exc.status != 404 or "RESOURCE_DOES_NOT_EXIST" not in exc.message:
            raise
        existing = None
    if existing is None:
        made = api.post("endpoints/create", {"name": endpoint, **route})
    else:
        made = api.post("endpoints/update", {"endpoint_id": existing["endpoint_id"], **route})
    return Registered(
        tracking_uri=tracking_uri,
        endpoint=endpoint,
        endpoint_id=made["endpoint"]["endpoint_id"],
        model_definition_id=definition_id,
        secret_id=secret_id,
        api_base=api_base,
        model_name=model_name,
        created=existing is None,
    )


def _named(items: Sequence[Mapping[str, Any]], key: str, name: str) -> Mapping[str, Any] | None:
    return next((item for item in items if item.get(key) == name), None)


def chat(
    tracking_uri: str, endpoint: str, messages: Sequence[Mapping[str, str]], *, timeout: float = 120.0, **params: Any
) -> dict[str, Any]:
    """One chat completion through the gateway, as the Playground sends it; the OpenAI answer."""
    url = f"{gateway_base(tracking_uri)}/chat/completions"
    body = {"model": endpoint, "messages": [dict(m) for m in messages], **params}
    return _request(url, "POST", body, headers=_auth_headers(), timeout=timeout)


def upstream_models(api_base: str, api_key: str | None = None, timeout: float = 10.0) -> list[str]:
    """The model ids an OpenAI-compatible server lists at `GET <api_base>/models`."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = _request(f"{api_base.rstrip('/')}/models", headers=headers, timeout=timeout)
    return [str(item.get("id")) for item in data.get("data", []) if isinstance(item, Mapping) and item.get("id")]
