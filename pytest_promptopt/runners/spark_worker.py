"""What runs in a Spark Python worker: the job's settings as the worker receives them, and one
case run as a pytest process runs it (`execute.execute_case`).

Each Python worker keeps one adapter per model, one rate limiter per provider and one response
cache for its whole life (Spark reuses Python workers, and a worker runs one task at a time), so
a model is created once per worker, never per row. Model objects the driver holds (given as
objects, or made by a conftest's hook) arrive pickled in the job's `WorkerConfig`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import ResponseCache
from ..execute import error_result, execute_case, model_error
from ..judging import Judges
from ..models.base import Model, ModelError
from ..models.hosted import LiteLLMModel
from ..models.specs import BUNDLED, ModelSpec, create_model, with_timeout
from ..records import CaseResult
from ..suite.model import Case
from .execution import ExecutionSettings
from .limits import RateLimit, RateLimiter, Throttled, limit_for, throttle
from .spark_session import one_line

__all__ = ["WorkerConfig", "run_case", "worker_cache", "worker_config", "worker_judges", "worker_model"]


@dataclass(frozen=True)
class WorkerConfig:
    """What a Python worker needs besides the rows: plain data, pickled with each task."""

    # The job's settings, with the cache path made absolute, each rate limit a task's share, and
    # no model objects (they travel in `shipped`).
    execution: ExecutionSettings
    # spec key -> (digest, cloudpickled model): unpickled once per worker, not once per task
    shipped: Mapping[str, tuple[str, bytes]] = field(default_factory=dict)
    refused: Mapping[str, str] = field(default_factory=dict)  # spec key -> why it could not be shipped


def worker_config(execution: ExecutionSettings, tasks: int = 1) -> WorkerConfig:
    """The workers' settings. A rate limit is split between the `tasks` that run at once, as
    between xdist workers: a Python worker runs one task at a time and keeps its limiter for
    its life, so the workers together stay within the budget."""
    from pyspark import cloudpickle

    shipped, refused = {}, {}
    for key, model in execution.models.items():
        try:
            blob = cloudpickle.dumps(_shippable(model))
        except Exception as exc:  # its cases become model errors, as for a model that cannot be created
            name = getattr(model, "name", type(model).__name__)
            refused[key] = f"model {name!r} cannot be sent to Spark workers: it does not pickle ({one_line(exc)})"
            continue
        shipped[key] = (hashlib.sha256(blob).hexdigest()[:16], blob)
    path = execution.cache_path
    path = path.resolve().as_posix() if isinstance(path, Path) else str(path)
    sent = dataclasses.replace(execution.share(max(1, tasks)), cache_path=path, models={})
    return WorkerConfig(sent, shipped, refused)


def _shippable(model: Model) -> Model:
    """A hosted model keeps its retry policy on the workers but not this process's rate limiter
    (a lock and this process's budget): each worker gives it its own (`worker_model`)."""
    if isinstance(model, Throttled) and model.limiter is not None:
        return Throttled(model.model, model.policy)  # type: ignore[return-value]
    return model


# Per Python worker process, for its whole life: Spark reuses a Python worker for task after
# task (spark.python.worker.reuse, on by default), and a worker runs one task at a time. Memos
# of what the worker built, never set from outside.
_models: dict[str, Model] = {}
_caches: dict[tuple[str, str], ResponseCache] = {}
_limiters: dict[RateLimit, RateLimiter] = {}  # by the worker's share of a provider's limit


def worker_model(spec: ModelSpec, config: WorkerConfig) -> Model:
    """The worker's adapter for `spec`, made on first use. A shipped object is keyed by its
    pickle's digest too: a different object (or the same one changed) is a different model."""
    if spec.key in config.refused:
        raise ModelError(config.refused[spec.key])
    shipped = config.shipped.get(spec.key)
    if shipped is not None:
        digest, blob = shipped
        key = f"{spec.key}:{digest}"
        model = _models.get(key)
        if model is None:
            try:
                model = pickle.loads(blob)
            except Exception as exc:
                raise ModelError(
                    f"the model object could not be loaded on the Spark worker ({one_line(exc)}); "
                    "its class must be importable there (install its module on the workers)"
                ) from None
            _models[key] = model
        if isinstance(model, Throttled):  # a hosted adapter, shipped without its limiter
            model.limiter = _worker_limiter(getattr(model.model, "model", model.name), config)
        return model
    execution = config.execution
    effective = with_timeout(spec, execution.timeout_s)
    # The retries and limits are the job's: a worker outlives jobs, which may set others.
    key = f"{effective.key}:{execution.retries}:{execution.rate_limits}"
    model = _models.get(key)
    if model is None:
        model = _throttled(create_model(effective), config)
        _models[key] = model
    return model


def _throttled(model: Model, config: WorkerConfig) -> Model:
    """A hosted model retries transient faults and keeps to its provider's rate limit, as in a
    pytest process (`PromptoptSession.model_for`), with this worker's share of the limit."""
    if not isinstance(model, LiteLLMModel):
        return model
    return throttle(model, config.execution.retries, _worker_limiter(model.model, config))  # type: ignore[return-value]


def _worker_limiter(model_id: str, config: WorkerConfig) -> RateLimiter | None:
    limit = limit_for(config.execution.rate_limits, model_id)
    if limit is None:
        return None
    limiter = _limiters.get(limit)
    if limiter is None:
        limiter = _limiters[limit] = RateLimiter(limit)
    return limiter


def worker_cache(config: WorkerConfig) -> ResponseCache:
    """The worker's response cache for the job's cache file and mode (also where `similar`
    graded here keeps its embeddings). A corrupt or read-only file degrades here as in a pytest
    process (cache_file.py), with a `CacheWarning` in the executor's log; the driver checked the
    file before the job (`PromptoptSession.start`), so on one machine it says so too."""
    execution = config.execution
    key = (str(execution.cache_path), execution.cache_mode.value)
    cache = _caches.get(key)
    if cache is None:
        cache = _caches[key] = ResponseCache(Path(execution.cache_path), execution.cache_mode)
    return cache


def worker_judges(config: WorkerConfig) -> Judges:
    """Judge models on a worker: built from their specs as the cases' models are (a conftest's
    hook-made judges arrive shipped), through the worker's cache."""
    return Judges(
        lambda spec: worker_model(spec, config),
        lambda: worker_cache(config),
        config.execution.judge or ModelSpec(BUNDLED),
    )


def run_case(case: Case, nodeid: str, config: WorkerConfig) -> CaseResult:
    """`case`'s result, computed on this worker; every fault becomes `result.error`."""
    try:
        model = worker_model(case.model, config)
    except ModelError as exc:
        return model_error(case, nodeid, exc)
    try:
        return execute_case(case, model, worker_cache(config), nodeid, judges=worker_judges(config))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # execute_case turns model and check faults into errors; this is anything
        # else, SystemExit included: it would end this Python worker and fail the whole job
        return error_result(case, nodeid, f"internal error on the Spark worker: {one_line(exc)}")
