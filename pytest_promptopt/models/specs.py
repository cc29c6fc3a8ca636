"""Model specs (what a suite or option names), their resolution to adapters, and the judge a
model-graded assertion's `provider` names."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..redact import redact
from .base import Model, ModelError
from .local_runtimes import RUNTIMES as LOCAL_RUNTIMES  # the bundled model's runtimes (models/local.py)

__all__ = [
    "Answers",
    "BUNDLED",
    "LOCAL_RUNTIMES",
    "ModelSpec",
    "case_id_tags",
    "create_model",
    "distinct_displays",
    "env_reference",
    "is_model",
    "local_runtime_choice",
    "model_name",
    "parse_model_spec",
    "provider_spec",
    "with_local_runtime",
    "with_timeout",
]

BUNDLED = "smollm2"
_BUNDLED_ALIASES = {"smollm2", "bundled", "local:smollm2", "smollm2-135m-instruct"}

# promptfoo provider prefixes whose litellm name differs; others map `p:model` to `p/model`.
_PROVIDER_RENAMES = {
    "vertex": "vertex_ai",
    "ollama:chat": "ollama_chat",
    "ollama:completion": "ollama",
    "openai:chat": "openai",
    "openai:completion": "text-completion-openai",
    "anthropic:messages": "anthropic",
    "azure:chat": "azure",
    "azureopenai": "azure",
}
_UNSUPPORTED_PREFIXES = (
    "python:",
    "exec:",
    "file://",
    "http:",
    "https:",
    "webhook:",
    "browser:",
    "golang:",
    "sequence:",
)

# `{{ env.NAME }}` or `{{ env['NAME'] }}`, the whole value: a reference to an environment variable.
_ENV_REFERENCE = re.compile(r"""^\s*\{\{\s*env(?:\.(\w+)|\[\s*['"]([^'"]+)['"]\s*\])\s*\}\}\s*$""")

# promptfoo's camelCase provider config keys and their litellm names.
_CONFIG_RENAMES = {
    "apiBaseUrl": "api_base",
    "apiHost": "api_base",
    "maxTokens": "max_tokens",
    "apiKeyEnvar": "api_key_env",
    "topP": "top_p",
}


# Which answers a provider's cases are graded on: its adapter's key and its transform (ModelSpec.answers)
Answers = tuple[str, str | None]


@dataclass(frozen=True)
class ModelSpec:
    """Which model a case uses: an id (`smollm2`, `echo`, `fake`, `openai/gpt-4o-mini`, ...) and params."""

    id: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    # promptfoo's provider `transform`: code run on this provider's answers before a test's
    # transform (execute.py). Not the model's: it stays out of `key` and of the response cache.
    transform: str | None = None

    @functools.cached_property  # asked for every case the runner looks ahead at
    def key(self) -> str:
        """Stable identity used to share one adapter per process (params included)."""
        blob = json.dumps({"id": self.id, "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @property
    def display(self) -> str:
        return self.label or self.id

    @property
    def answers(self) -> Answers:
        """Which answers a case of this spec is graded on: the adapter's (`key`) after this
        transform. Two providers that differ only in their transform give different answers
        (shrinking's memo and a repair's groups go by this)."""
        return self.key, self.transform

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "params": redact(dict(self.params)), "label": self.label}


def parse_model_spec(entry: Any, where: str = "providers") -> ModelSpec:
    """Read a model from a string or promptfoo provider object (`{id, config, label, transform}`)."""
    transform = None
    if isinstance(entry, str):
        ident, params, label = entry, {}, ""
    elif isinstance(entry, Mapping):
        if not isinstance(entry.get("id"), str):
            raise ValueError(f"{where}: a provider object needs an 'id' string")
        ident = entry["id"]
        params = dict(entry.get("config") or {})
        label = str(entry.get("label") or "")
        transform = entry.get("transform")
        if transform is not None and not (isinstance(transform, str) and transform.strip()):
            raise ValueError(f"{where}: a provider's transform is JavaScript code or a file:// reference, as text")
    else:
        raise ValueError(f"{where}: a provider is a string id or an object with 'id' and 'config'")
    params = {_CONFIG_RENAMES.get(k, k): v for k, v in params.items()}
    for key in ("apiKey", "api_key"):
        # promptfoo's `apiKey: '{{ env.OPENAI_API_KEY }}'` names a variable, as `apiKeyEnvar` does,
        # and wins over it (`config.apiKey || env[config.apiKeyEnvar]`); unset, it renders empty
        # and the provider falls back to its own variables. The key itself never enters the spec.
        named = env_reference(params.get(key))
        if named is not None:
            params.pop(key)
            if os.environ.get(named):
                params["api_key_env"] = named
    if "apiKey" in params or "api_key" in params:
        written = str(params.get("apiKey", params.get("api_key")))
        shell = re.fullmatch(r"\$\{?(\w+)\}?", written.strip())
        hint = (
            f" (a shell-style '{written}' is not expanded in a suite: write apiKeyEnvar: {shell.group(1)})"
            if shell
            else ""
        )
        raise ValueError(
            f"{where}: API keys must not be written in a suite; set the provider's environment variable "
            f"(e.g. OPENAI_API_KEY) or name one with 'apiKeyEnvar' or apiKey: '{{{{ env.NAME }}}}'{hint}"
        )
    return ModelSpec(_normalise_id(ident.strip(), where), params, label, transform)


def env_reference(value: Any) -> str | None:
    """The variable a config value names as a whole (`{{ env.NAME }}`, `{{ env['NAME'] }}`, as
    promptfoo renders them from the environment), else None."""
    named = _ENV_REFERENCE.match(value) if isinstance(value, str) else None
    return None if named is None else named.group(1) or named.group(2)


def case_id_tags(specs: Sequence[ModelSpec]) -> list[str | None]:
    """Each provider's part of its cases' ids (suite/cases.case_id): None when it is the only
    one (the ids leave it out), else its name, with its transform only when another provider of
    that name has a different one (a provider without one keeps its bare name, so adding a
    transformed twin leaves its ids alone). So editing a transform keeps a case's id (a baseline
    sees the case change, not one removed and one added), unless the transform is what tells two
    providers apart."""
    if len(specs) < 2:
        return [None] * len(specs)
    tags: list[str | None] = []
    for spec in specs:
        rivals = {other.transform for other in specs if other.display == spec.display}
        apart = len(rivals) > 1 and spec.transform is not None
        tags.append(f"{spec.display} | transform: {spec.transform}" if apart else spec.display)
    return tags


def distinct_displays(specs: Sequence[ModelSpec]) -> list[str]:
    """Each spec's name in item names: its label or id, with `#<position>` when another spec
    shows the same (two providers with one id and different configs are items of their own)."""
    shown = [spec.display for spec in specs]
    return [name if shown.count(name) == 1 else f"{name}#{i}" for i, name in enumerate(shown)]


def is_model(value: Any) -> bool:
    """A model adapter object (what `provider=` may be in a Python test)."""
    return hasattr(value, "generate") and hasattr(value, "cache_identity")


def model_name(model: Any) -> str:
    """A model object's name for messages."""
    return str(getattr(model, "name", "") or type(model).__name__)


def provider_spec(provider: Any, where: str = "provider") -> ModelSpec | None:
    """The `ModelSpec` an assertion's `provider` names (None for none, or for a model object).
    Raises `ValueError` for a provider that cannot name a model."""
    if provider is None or is_model(provider):
        return None
    if isinstance(provider, ModelSpec):
        return provider
    return parse_model_spec(provider, where)


def _normalise_id(ident: str, where: str) -> str:
    if not ident:
        raise ValueError(f"{where}: empty model id")
    if ident in _BUNDLED_ALIASES:
        return BUNDLED
    if ident in {"echo", "fake"}:
        return ident
    if ident.startswith("litellm:"):
        return ident[len("litellm:") :]
    if ident.startswith(_UNSUPPORTED_PREFIXES):
        raise ValueError(
            f"{where}: provider '{ident}' is not supported; use '{BUNDLED}', 'echo', 'fake', or a litellm "
            "model such as 'openai/gpt-4o-mini'"
        )
    if "/" in ident.split(":", 1)[0] or ":" not in ident:
        if "/" not in ident:
            raise ValueError(
                f"{where}: unknown model '{ident}'; use '{BUNDLED}' (the bundled model), 'echo', 'fake', "
                "or a litellm model such as 'openai/gpt-4o-mini'"
            )
        return ident
    for prefix in sorted(_PROVIDER_RENAMES, key=len, reverse=True):
        if ident.startswith(prefix + ":"):
            return f"{_PROVIDER_RENAMES[prefix]}/{ident[len(prefix) + 1 :]}"
    provider, _, model = ident.partition(":")
    return f"{provider}/{model}"


def with_timeout(spec: ModelSpec, timeout_s: float) -> ModelSpec:
    """`spec` with the run's timeout for a hosted model whose config sets none."""
    if "/" not in spec.id or "timeout" in spec.params:
        return spec
    return dataclasses.replace(spec, params={**spec.params, "timeout": timeout_s})


def local_runtime_choice(raw: Any) -> str | None:
    """The bundled model's runtime as --promptopt-local-runtime (or its ini twin) gives it; None if unset."""
    text = "" if raw is None else str(raw).strip().lower()
    if text and text not in LOCAL_RUNTIMES:
        raise ValueError(f"{raw!r} is not one of {', '.join(LOCAL_RUNTIMES)}")
    return text or None


def with_local_runtime(spec: ModelSpec, runtime: str | None) -> ModelSpec:
    """`spec` with the run's runtime (--promptopt-local-runtime) for the bundled model, unless its
    provider config names one."""
    if spec.id != BUNDLED or not runtime or "runtime" in spec.params:
        return spec
    return dataclasses.replace(spec, params={**spec.params, "runtime": runtime})


def with_tracking_server(spec: ModelSpec, tracking_uri: str | None) -> ModelSpec:
    """`spec` with the session's tracking server as its AI Gateway, for an `mlflow-gateway:`
    provider whose config names no server (models/providers.py)."""
    if not spec.id.startswith("mlflow-gateway/"):
        return spec
    from .providers import with_gateway

    return dataclasses.replace(spec, params=with_gateway(spec.id, spec.params, tracking_uri))


def create_model(spec: ModelSpec) -> Model:
    """Build the adapter for a spec. Heavy libraries load later, on the first call."""
    params = dict(spec.params)
    if spec.id == BUNDLED:
        from .local import LocalModel

        return LocalModel(params)
    if spec.id == "echo":
        from .fakes import EchoModel

        return EchoModel()
    if spec.id == "fake":
        from .fakes import FakeModel

        responses = params.get("responses")
        if not isinstance(responses, Mapping) and "default" not in params:
            raise ModelError("the 'fake' provider needs config.responses (prompt -> answer) or config.default")
        return FakeModel(dict(responses or {}), default=params.get("default"), name=spec.label or "fake")
    if spec.id.startswith("mlflow-gateway/"):
        from .providers import MlflowGatewayModel

        return MlflowGatewayModel(spec.id[len("mlflow-gateway/") :], params)
    from .hosted import LiteLLMModel

    if spec.id.startswith("databricks/"):
        from .providers import databricks_params

        params = databricks_params(params)
    return LiteLLMModel(spec.id, params)
