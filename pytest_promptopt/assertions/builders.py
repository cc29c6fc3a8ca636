"""Python constructors for assertions: the YAML type names with `_` for `-`.

>>> contains("Paris")
Assertion(type='contains', value='Paris', ...)
>>> not_(regex(r"\\d"))            # the `not-` prefix
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from .base import Assertion
from .mlflow_scorers import mlflow_scorer as _mlflow_scorer

__all__ = [
    "assertion",
    "bleu",
    "chrf",
    "contains",
    "contains_all",
    "contains_any",
    "contains_json",
    "cost",
    "answer_relevance",
    "closed_qa",
    "equals",
    "factuality",
    "g_eval",
    "llm_rubric",
    "mlflow_scorer",
    "gleu",
    "icontains",
    "icontains_all",
    "icontains_any",
    "is_json",
    "latency",
    "length",
    "levenshtein",
    "not_",
    "python",
    "regex",
    "rouge_1",
    "rouge_2",
    "rouge_l",
    "rouge_n",
    "similar",
    "starts_with",
    "word_count",
]


def assertion(
    type: str,
    value: Any = None,
    *,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Assertion:
    """Any assertion by its YAML name, e.g. `assertion("not-icontains", "sorry")`."""
    inverse = type.startswith("not-")
    return Assertion(type[4:] if inverse else type, value, threshold, weight, metric, inverse, config, where=type)


def not_(a: Assertion) -> Assertion:
    """Invert an assertion, like the `not-` prefix in YAML."""
    return replace(a, inverse=not a.inverse)


def _simple(name: str) -> Callable[..., Assertion]:
    def build(value: Any, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
        return assertion(name, value, weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion."
    return build


equals = _simple("equals")
contains = _simple("contains")
icontains = _simple("icontains")
starts_with = _simple("starts-with")
regex = _simple("regex")


def _listed(name: str) -> Callable[..., Assertion]:
    def build(values: Sequence[str], *, weight: float = 1.0, metric: str | None = None) -> Assertion:
        return assertion(name, list(values), weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion (a list of strings)."
    return build


contains_any = _listed("contains-any")
contains_all = _listed("contains-all")
icontains_any = _listed("icontains-any")
icontains_all = _listed("icontains-all")


def is_json(
    schema: Mapping[str, Any] | str | None = None, *, weight: float = 1.0, metric: str | None = None
) -> Assertion:
    """Output is JSON (optionally valid against a JSON Schema: a dict or `file://schema.json`)."""
    return assertion("is-json", schema, weight=weight, metric=metric)


def contains_json(
    schema: Mapping[str, Any] | str | None = None, *, weight: float = 1.0, metric: str | None = None
) -> Assertion:
    """Output contains a JSON object (optionally valid against a JSON Schema)."""
    return assertion("contains-json", schema, weight=weight, metric=metric)


def levenshtein(value: str, threshold: float = 5, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """Edit distance to `value` at most `threshold` (promptfoo's default: 5)."""
    return assertion("levenshtein", value, threshold=threshold, weight=weight, metric=metric)


def _bounds(name: str) -> Callable[..., Assertion]:
    def build(
        exactly: int | None = None,
        *,
        min: int | None = None,
        max: int | None = None,
        weight: float = 1.0,
        metric: str | None = None,
    ) -> Assertion:
        value: Any = (
            exactly if exactly is not None else {k: v for k, v in (("min", min), ("max", max)) if v is not None}
        )
        return assertion(name, value, weight=weight, metric=metric)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = f"The `{name}` assertion: an exact count, or `min=`/`max=` bounds."
    return build


word_count = _bounds("word-count")
length = _bounds("length")


def latency(max_ms: float, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """The model answered within `max_ms` milliseconds."""
    return assertion("latency", threshold=max_ms, weight=weight, metric=metric)


def cost(max_cost: float, *, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """The call cost at most `max_cost` (for providers that report cost)."""
    return assertion("cost", threshold=max_cost, weight=weight, metric=metric)


def python(
    reference: str | Callable[..., Any],
    *,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Assertion:
    """A user check: `"module:function"`, `"file://checks.py:function"`, or the function itself."""
    return assertion("python", reference, threshold=threshold, weight=weight, metric=metric, config=config)


def similar(
    value: str | Sequence[str],
    threshold: float = 0.75,
    *,
    provider: Any = None,
    weight: float = 1.0,
    metric: str | None = None,
) -> Assertion:
    """Cosine similarity of sentence embeddings to `value` (or to any of a list) at least `threshold`.

    `provider`: the embedding model (default: the offline all-MiniLM-L6-v2), e.g.
    `"openai/text-embedding-3-small"`, `{"id": ..., "config": {...}}`, or an object with
    `embed(texts) -> vectors`, `cache_identity` (and `hosted = False` if it makes no calls)."""
    value = value if isinstance(value, str) else list(value)
    return replace(assertion("similar", value, threshold=threshold, weight=weight, metric=metric), provider=provider)


def _reference(name: str, default_threshold: float, doc: str) -> Callable[..., Assertion]:
    def build(
        reference: str | Sequence[str],
        threshold: float = default_threshold,
        *,
        weight: float = 1.0,
        metric: str | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> Assertion:
        value = reference if isinstance(reference, str) else list(reference)
        return assertion(name, value, threshold=threshold, weight=weight, metric=metric, config=config)

    build.__name__ = name.replace("-", "_")
    build.__doc__ = (
        f"The `{name}` assertion: {doc} of the output against `reference` (or the best of a list) at least `threshold`."
    )
    return build


rouge_n = _reference(
    "rouge-n", 0.75, "ROUGE-N F-measure on promptfoo's tokens (its rouge-n; `config={'n': 2}` for bigrams)"
)
rouge_1 = _reference("rouge-1", 0.75, "ROUGE-1 F-measure")
rouge_2 = _reference("rouge-2", 0.75, "ROUGE-2 F-measure")
rouge_l = _reference("rouge-l", 0.75, "ROUGE-L F-measure")
bleu = _reference("bleu", 0.5, "sentence BLEU (sacrebleu)")
chrf = _reference("chrf", 0.5, "chrF (sacrebleu)")
gleu = _reference("gleu", 0.5, "sentence GLEU (NLTK)")


# ----------------------------------------------------------------------------- model-graded
# `provider`: the judge (a provider id such as "openai/gpt-4o-mini", `{"id": ..., "config": ...}`
# or a model object); None: the run's judge model (--promptopt-judge-model).


def _judged(
    name: str,
    value: Any,
    provider: Any,
    threshold: float | None,
    weight: float,
    metric: str | None,
    config: Mapping[str, Any] | None,
) -> Assertion:
    return replace(
        assertion(name, value, threshold=threshold, weight=weight, metric=metric, config=config), provider=provider
    )


def llm_rubric(
    rubric: str,
    *,
    provider: Any = None,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Assertion:
    """A judge decides whether the output satisfies `rubric` (its `pass`; with `threshold`, also
    its score must reach it)."""
    return _judged("llm-rubric", rubric, provider, threshold, weight, metric, config)


def g_eval(
    criteria: str | Sequence[str],
    *,
    steps: Sequence[str] | None = None,
    provider: Any = None,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
) -> Assertion:
    """G-Eval: the judge scores the output 0-10 on each criterion, by evaluation `steps` (written
    by the judge when not given); passes when the mean score / 10 reaches `threshold` (0.7)."""
    value = criteria if isinstance(criteria, str) else list(criteria)
    config = {"steps": list(steps)} if steps else None
    return _judged("g-eval", value, provider, threshold, weight, metric, config)


def factuality(
    reference: str,
    *,
    provider: Any = None,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
    scores: Mapping[str, float] | None = None,
) -> Assertion:
    """The judge compares the output's facts with `reference` (categories A-E as promptfoo);
    `scores` overrides the category scores (`subset`, `superset`, `agree`, `disagree`, `differButFactual`)."""
    return _judged(
        "factuality", reference, provider, threshold, weight, metric, {"factuality": dict(scores)} if scores else None
    )


def answer_relevance(
    *, provider: Any = None, threshold: float | None = None, weight: float = 1.0, metric: str | None = None
) -> Assertion:
    """The judge scores how directly the output answers the question (`vars.query`, else the prompt)."""
    return _judged("answer-relevance", None, provider, threshold, weight, metric, None)


def closed_qa(criterion: str, *, provider: Any = None, weight: float = 1.0, metric: str | None = None) -> Assertion:
    """The judge decides (Y/N) whether the output meets `criterion` (promptfoo's model-graded-closedqa)."""
    return _judged("closed-qa", criterion, provider, None, weight, metric, None)


def mlflow_scorer(
    scorer: Any,
    expectations: Any = None,
    *,
    threshold: float | None = None,
    weight: float = 1.0,
    metric: str | None = None,
) -> Assertion:
    """An MLflow GenAI scorer as an assertion: a built-in judge (`Guidelines(guidelines=...)`,
    `Correctness()`, ...) or a `@scorer` function. `expectations`: a mapping, a string
    (`expected_response`) or a list of strings (`expected_facts`)."""
    return _mlflow_scorer(scorer, expectations, threshold=threshold, weight=weight, metric=metric)
