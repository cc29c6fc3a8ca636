"""How cases run, as one frozen object: the cache, time limits, retries, rate limits, concurrency,
batches, the run's judge model, and the model objects a Spark job takes along.

The session builds one `ExecutionSettings` from its `Settings` (this process's share of the run's
budgets) and hands it to the in-process runner (runners/pool.py), the Spark jobs and, through
them, the Spark workers (runners/spark.py, runners/spark_worker.py). It is plain data and
pickles, as long as its `models` do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import CacheMode
from ..models.base import Model
from ..models.specs import ModelSpec
from .limits import DEFAULT_CONCURRENCY, DEFAULT_RETRIES, RateLimit

__all__ = ["DEFAULT_BATCH_SIZE", "ExecutionSettings"]

DEFAULT_BATCH_SIZE = 8


@dataclass(frozen=True)
class ExecutionSettings:
    """What every runner needs besides the cases (see the module docstring).

    >>> ExecutionSettings(Path(".promptopt/cache.sqlite"), CacheMode.REPLAY, retries=0)
    """

    cache_path: Path | str  # the response cache's SQLite file (a str is passed to Spark workers as it is)
    cache_mode: CacheMode = CacheMode.READWRITE
    timeout_s: float = 60.0  # a hosted model's timeout when its config sets none
    retries: int = DEFAULT_RETRIES  # for hosted models without their own num_retries
    rate_limits: tuple[RateLimit, ...] = ()  # per provider, for the process (or Spark task) that holds them
    concurrency: int = DEFAULT_CONCURRENCY  # hosted calls at once in one process
    batch_size: int = DEFAULT_BATCH_SIZE  # cases per batch of a batching model
    judge: ModelSpec | None = None  # the run's judge model (model-graded assertions without a provider)
    # Model objects a Spark worker cannot build from their specs (given as objects, or made by a
    # conftest's hook), by `ModelSpec.key`: a Spark job ships them to its workers.
    models: Mapping[str, Model] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache_mode", CacheMode(self.cache_mode))
        object.__setattr__(self, "rate_limits", tuple(self.rate_limits))

    def share(self, parts: int) -> ExecutionSettings:
        """One of `parts` equal shares of the concurrency and rate limits: an xdist worker's
        (W workers together stay within the run's budget) or a Spark task's."""
        if parts <= 1:
            return self
        return dataclasses.replace(
            self,
            concurrency=max(1, self.concurrency // parts),
            rate_limits=tuple(limit.share(parts) for limit in self.rate_limits),
        )

    def with_models(self, models: Mapping[str, Model]) -> ExecutionSettings:
        """These settings for a Spark job that takes `models` along (see `models`)."""
        return dataclasses.replace(self, models=dict(models))
