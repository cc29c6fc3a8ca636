"""Judge models for model-graded assertions (`llm-rubric`, `g-eval`, ... and MLflow's LLM judges).

A grader stays a plain function `(output, assertion, ctx) -> Grade`: it asks `ctx.judge` (a
`Judge`, bound to the case being graded) to call a judge model. The judge resolves a provider
(the assertion's `provider:`, else the test's `options.provider`, else the run's judge model:
`--promptopt-judge-model`, else `--promptopt-model`) to an adapter through the same model
registry as the cases (`PromptoptSession.model_for`: the `pytest_promptopt_make_model` hook,
then `create_model`, rate limits and retries for hosted models), and calls it through the
response cache, so judge calls are recorded, replayed and counted in the case's `calls` and
`cache_hits`. The cache key is the judge's identity, its parameters and the judge prompt, which
holds the rubric and the output.

`Judges` is the per-process part (models, cache, default), owned by the session (or a Spark
worker) and handed to the runner, `prompt_check` and the repair; `Judges.bind(stats)` gives the
`Judge` of one case, which the runner puts in its `AssertionContext`. Which assertion types call
a judge, and how often, the assertion registry says (`register(..., judge_calls=...)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .assertions.base import is_model_graded, judge_calls_for, walk
from .cache import CallStats, ResponseCache
from .models.base import Model, ModelError, Request, Response
from .models.specs import ModelSpec, is_model, provider_spec

__all__ = ["Judge", "Judges", "judge_calls", "judge_specs"]


@dataclass(frozen=True)
class Judges:
    """How this process reaches judge models: `model_for` (spec -> adapter, one per spec),
    `cache` (the response cache, made on first use) and `default` (the run's judge model)."""

    model_for: Callable[[ModelSpec], Model]
    cache: Callable[[], ResponseCache]
    default: ModelSpec

    def bind(self, stats: CallStats | None = None, cache: ResponseCache | None = None) -> Judge:
        """The judge of one case: its calls count into `stats` (the case's)."""
        return Judge(self, stats if stats is not None else CallStats(), cache)


class Judge:
    """Calls judge models for the assertions of one case (see the module docstring)."""

    def __init__(self, judges: Judges, stats: CallStats, cache: ResponseCache | None = None) -> None:
        self.judges = judges
        self.stats = stats
        self._cache = cache

    @property
    def default(self) -> ModelSpec:
        return self.judges.default

    def spec(self, provider: Any = None) -> ModelSpec | None:
        """The spec of the judge `provider` names (the run's judge model for None); None for a
        model object."""
        if is_model(provider):
            return None
        if isinstance(provider, Mapping) and "id" not in provider and set(provider) == {"config"}:
            # promptfoo's `provider: {config: {...}}`: the default judge with these parameters
            base = self.judges.default
            return dataclasses.replace(base, params={**base.params, **(provider["config"] or {})})
        return provider_spec(provider) or self.judges.default

    def model(self, provider: Any = None) -> Model:
        """The adapter of the judge `provider` names. A model that cannot be built raises `ModelError`."""
        if is_model(provider):
            return provider
        try:
            spec = self.spec(provider)
        except ValueError as exc:
            raise ModelError(str(exc)) from None
        assert spec is not None
        return self.judges.model_for(spec)

    def fetch(self, model: Any, request: Request) -> Response:
        """`model`'s answer to `request` through the response cache, counted for this case."""
        cache = self._cache if self._cache is not None else self.judges.cache()
        return cache.fetch(model, request, self.stats)

    def __call__(self, provider: Any, request: Request) -> Response:
        """The judge's answer (`provider` as in `model`). Faults raise `ModelError`."""
        return self.fetch(self.model(provider), request)


def judge_calls(assertions: Iterable[Any]) -> int:
    """The most judge calls grading one answer against `assertions` may make (every one a cache
    miss), as the assertion types registered them: one per model-graded assertion, two for
    `g-eval` (its steps, then the score), one per MLflow scorer."""
    return sum(judge_calls_for(str(getattr(a, "type", ""))) for a in walk(assertions))


def judge_specs(assertions: Iterable[Any], default: ModelSpec | None = None) -> list[ModelSpec]:
    """The judge model specs `assertions` use: their providers, and `default` when one of them
    is model-graded without a provider (for shipping hook-made judges to Spark)."""
    specs: dict[str, ModelSpec] = {}
    for assertion in walk(assertions):
        # `similar`'s provider is an embedding model; MLflow judges call their own
        if not is_model_graded(str(getattr(assertion, "type", ""))):
            continue
        provider = getattr(assertion, "provider", None)
        if provider is None and default is not None:
            specs[default.key] = default
        try:
            spec = provider_spec(provider)
        except ValueError:
            continue  # reported when the assertion runs
        if spec is not None:
            specs[spec.key] = spec
    return list(specs.values())
