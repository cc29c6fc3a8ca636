"""Hosted providers the plugin configures before litellm sees them.

- `mlflow-gateway:<endpoint>` (promptfoo's id): an endpoint of MLflow's AI Gateway, called
  through litellm's OpenAI provider at `<server>/gateway/mlflow/v1`. The server comes from the
  provider's `config.api_base` (or promptfoo's `gatewayUrl`), else `$MLFLOW_GATEWAY_URL`, else
  the session's tracking URI (`--promptopt-mlflow-uri`, else `$MLFLOW_TRACKING_URI`) when it is
  an http(s) server. The Bearer token is `$MLFLOW_GATEWAY_API_KEY` (or the variable
  `api_key_env` names); like promptfoo, it never falls back to `OPENAI_API_KEY`, so a cloud key
  is not sent to a self-hosted gateway.
- `databricks/<endpoint>` (litellm's Databricks provider, also `databricks:<endpoint>`):
  litellm reads `DATABRICKS_API_BASE` / `DATABRICKS_API_KEY`, and without them asks the
  databricks-sdk. Databricks' own variables, `DATABRICKS_HOST` and `DATABRICKS_TOKEN` (those the
  Databricks CLI and SDK read), and promptfoo's `workspaceUrl` / `DATABRICKS_WORKSPACE_URL` are
  mapped onto litellm's settings here, so a personal access token works without the SDK.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..redact import mask_credentials, scrub, without_secrets
from .base import ModelError, Request, Response
from .hosted import LiteLLMModel

__all__ = ["GATEWAY_PREFIX", "MlflowGatewayModel", "databricks_params", "with_gateway"]

GATEWAY_PREFIX = "mlflow-gateway/"
_GATEWAY_PATH = "/gateway/mlflow/v1"
_URL_KEYS = ("api_base", "gatewayUrl", "gateway_url")


def _http(url: Any) -> str | None:
    text = str(url or "").strip().rstrip("/")
    return text if text.startswith(("http://", "https://")) else None


def with_gateway(spec_id: str, params: Mapping[str, Any], tracking_uri: str | None) -> Mapping[str, Any]:
    """`params` of an `mlflow-gateway/...` spec with the session's tracking server as its gateway,
    when neither the provider's config nor `$MLFLOW_GATEWAY_URL` names one."""
    if not spec_id.startswith(GATEWAY_PREFIX) or _http(tracking_uri) is None:
        return params
    if any(params.get(key) for key in _URL_KEYS) or _http(os.environ.get("MLFLOW_GATEWAY_URL")):
        return params
    return {**params, "gateway_url": _http(tracking_uri)}


class MlflowGatewayModel(LiteLLMModel):
    """An MLflow AI Gateway endpoint, through litellm's OpenAI provider (see the module's doc)."""

    def __init__(self, endpoint: str, params: Mapping[str, Any] | None = None) -> None:
        params = dict(params or {})
        given = next((params.pop(key) for key in _URL_KEYS if key in params), None)
        for key in _URL_KEYS:
            params.pop(key, None)
        if not endpoint:
            raise ModelError("mlflow-gateway: name the endpoint, e.g. mlflow-gateway:my-endpoint")
        super().__init__(f"{GATEWAY_PREFIX}{endpoint}", params)
        self.endpoint = endpoint
        self.route = f"openai/{endpoint}"
        server = (
            _http(given) or _http(os.environ.get("MLFLOW_GATEWAY_URL")) or _http(os.environ.get("MLFLOW_TRACKING_URI"))
        )
        self.server = server  # None: the first call says where to set it
        if server is not None:
            self.params["api_base"] = server if server.endswith(_GATEWAY_PATH) else server + _GATEWAY_PATH

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        # The endpoint and the server it lives on; the key never (a key change keeps the cache).
        return {"model": self.model, "params": without_secrets(self.params)}

    def _api_key(self) -> str | None:
        if self.api_key_env:
            return super()._api_key()
        # A placeholder rather than None: litellm's OpenAI provider would send OPENAI_API_KEY.
        return os.environ.get("MLFLOW_GATEWAY_API_KEY") or "unused"

    def generate(self, request: Request) -> Response:
        if self.server is None:
            raise ModelError(
                f"mlflow-gateway:{self.endpoint}: no MLflow server to call; set the provider's config.api_base "
                "(e.g. http://127.0.0.1:5000), $MLFLOW_GATEWAY_URL, or an http(s) tracking URI "
                "(--promptopt-mlflow-uri / $MLFLOW_TRACKING_URI)"
            )
        try:
            return super().generate(request)
        except ModelError as exc:
            # The gateway answers an unknown endpoint with a 404 (RESOURCE_DOES_NOT_EXIST), which
            # litellm reports as a NotFoundError without the body.
            if "NotFoundError" not in str(exc) and "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
            raise ModelError(
                f"{exc} (no endpoint '{self.endpoint}' on {mask_credentials(scrub(self.server))}: see its AI Gateway page, "
                "or `python -m pytest_promptopt gateway register`)"
            ) from None


def databricks_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A `databricks/...` spec's params with Databricks' own settings mapped onto litellm's:
    `api_base` from `workspaceUrl`, else (when `$DATABRICKS_API_BASE` is unset) `$DATABRICKS_HOST`
    or `$DATABRICKS_WORKSPACE_URL`, plus `/serving-endpoints`; the key from `$DATABRICKS_TOKEN`
    when `$DATABRICKS_API_KEY` is unset. The token stays in the environment (`api_key_env`)."""
    params = dict(params)
    workspace = params.pop("workspaceUrl", None) or params.pop("workspace_url", None)
    if "api_base" not in params:
        host = workspace
        if not host and not os.environ.get("DATABRICKS_API_BASE"):
            host = os.environ.get("DATABRICKS_HOST") or os.environ.get("DATABRICKS_WORKSPACE_URL")
        if host:
            host = str(host).strip().rstrip("/")
            if "://" not in host:
                host = f"https://{host}"  # the CLI accepts a bare workspace host name
            params["api_base"] = host if host.endswith("/serving-endpoints") else f"{host}/serving-endpoints"
    if "api_key_env" not in params and not os.environ.get("DATABRICKS_API_KEY") and os.environ.get("DATABRICKS_TOKEN"):
        params["api_key_env"] = "DATABRICKS_TOKEN"
    return params
