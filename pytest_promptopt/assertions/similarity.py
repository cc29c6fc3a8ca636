"""The `similar` assertion: cosine similarity of sentence embeddings, as in promptfoo.

`value` is the expected text or a list of them (the output passes when it is similar enough to
any); `threshold` defaults to promptfoo's 0.75; the score is the highest similarity. `not-similar`
therefore passes only when the output is below the threshold for every value. The embedding
model is the assertion's `provider:` (default: the offline all-MiniLM-L6-v2, see
`models/embeddings.py`); the vectors are kept in `ctx.embeddings` (the run's response cache).
"""

from __future__ import annotations

from collections.abc import Iterable

from ..cache import embed
from ..models.embeddings import EmbeddingError, check_provider, cosine, embedder_for
from .base import Assertion, AssertionConfigError, AssertionContext, AssertionEvaluationError, Grade, register
from .reference import references

__all__ = ["SIMILAR_DEFAULT_THRESHOLD", "warm_up_embedders"]

SIMILAR_DEFAULT_THRESHOLD = 0.75  # promptfoo's


def _check(assertion: Assertion) -> None:
    references(assertion)
    try:
        check_provider(assertion.provider, f"{assertion.where or assertion.type}: provider")
    except ValueError as exc:
        raise AssertionConfigError(str(exc)) from None


@register("similar", check=_check)
def similar(output: str, assertion: Assertion, ctx: AssertionContext) -> Grade:
    values = references(assertion)
    threshold = float(assertion.threshold) if assertion.threshold is not None else SIMILAR_DEFAULT_THRESHOLD
    try:
        vectors = embed(embedder_for(assertion.provider), [output, *values], ctx.embeddings)
    except EmbeddingError as exc:
        raise AssertionEvaluationError(f"similar: {exc}") from None
    similarities = [cosine(vectors[0], v) for v in vectors[1:]]
    best = max(range(len(values)), key=similarities.__getitem__)
    similarity = similarities[best]
    passed = similarity >= threshold
    relation = "is greater than or equal to" if passed else "is less than"
    closest = f" (closest of {len(values)} values: {values[best][:60]!r})" if len(values) > 1 else ""
    # Cosine similarity may be negative; the score is clipped to [0, 1], the reason keeps it.
    return Grade(
        passed,
        min(1.0, max(0.0, similarity)),
        f"Similarity {similarity:.2f} {relation} threshold {threshold:g}{closest}",
    )


def warm_up_embedders(assertions: Iterable[Assertion]) -> None:
    """Load the embedders of these `similar` checks that load locally (`warm_up()`, the offline
    MiniLM), once each; one that cannot load is reported by its checks when they run."""
    for assertion in assertions:
        if assertion.type != "similar":
            continue
        try:
            embedder = embedder_for(assertion.provider)
            warm_up = getattr(embedder, "warm_up", None)
            if callable(warm_up):
                warm_up()
        except Exception:  # reported by the checks that use it, when they run
            continue
