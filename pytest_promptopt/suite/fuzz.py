"""A suite's `fuzz:` block: its generated template variables.

Generation (`generate`, at load time) runs the block's Hypothesis strategy seeded with the
block's `seed` and collects the first `count` distinct var sets; every process that loads the
suite (each xdist worker, every run) gets the same cases. `search_settings` and
`fixed_constants` steer the search; the shrinking replay (`shrinking.py`) uses the same ones.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..adversarial import adversarial
from ..var_strategies import vars_from_examples, vars_from_schema, vars_key

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from .dataset import CaseFactory

__all__ = ["FuzzBlock", "FuzzOrigin", "fixed_constants", "generate", "search_settings"]


@dataclass(frozen=True, eq=False)
class FuzzBlock:
    """A suite's `fuzz:` block as plain data (it travels, pickled, with each generated case).

    `schemas` are `fuzz.vars` (var -> JSON Schema); `examples` the tests' vars without those."""

    count: int
    seed: int
    variants: tuple[str, ...]
    schemas: tuple[tuple[str, Any], ...] = ()
    examples: tuple[Mapping[str, Any], ...] = ()
    shrink: int = 30

    @property
    def key(self) -> str:
        blob = json.dumps(
            [self.count, self.seed, self.variants, self.schemas, self.examples], sort_keys=True, default=str
        )
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]

    @property
    def max_examples(self) -> int:
        # Room for duplicates (sampled values, the same edit twice) on top of `count` distinct sets;
        # generation stops as soon as it has `count`. The replay that shrinks must use the same value.
        return 2 * self.count + 20

    def strategy(self) -> SearchStrategy[dict[str, Any]]:
        return _block_strategy(self)


@functools.lru_cache(maxsize=64)  # generation and every shrinking replay of a block share its strategy
def _block_strategy(block: FuzzBlock) -> SearchStrategy[dict[str, Any]]:
    from hypothesis import strategies as st

    examples = [dict(e) for e in block.examples if e]
    base = vars_from_examples(examples) if examples else st.just({})
    if block.schemas:
        schema = {"type": "object", "properties": dict(block.schemas), "required": [name for name, _ in block.schemas]}
        base = st.tuples(base, vars_from_schema(schema)).map(lambda pair: {**pair[0], **pair[1]})
    return adversarial(base, block.variants)


@dataclass(frozen=True, eq=False)
class FuzzOrigin:
    """Where a generated case comes from: its block, its index there, and the factory that
    builds a case of its prompt x provider from any vars (for the shrinking replay)."""

    block: FuzzBlock
    index: int
    factory: CaseFactory = field(repr=False)


def search_settings(block: FuzzBlock, shrink: bool) -> Any:
    """Everything that steers the search is set here, from Hypothesis' built-in defaults (not the
    current profile, which a project's conftest may change), so generation and replay agree."""
    from hypothesis import HealthCheck, Phase, Verbosity, settings

    return settings(
        settings.get_profile("default"),
        max_examples=block.max_examples,
        phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
        database=None,
        derandomize=False,  # seeded with the block's seed instead (`hypothesis.seed`)
        deadline=None,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )


@contextlib.contextmanager
def fixed_constants() -> Iterator[None]:
    """Hypothesis (6.1xx) sometimes draws constants found in the source of the *local* modules
    loaded at that moment (`providers._get_local_constants`). Which modules are loaded differs
    between a plain run, an xdist worker and a run of one file, so the same seed would give other
    cases there. The block's search uses Hypothesis' global constants only. This is Hypothesis
    internals: when they move, the guard does nothing and tests/test_strategies.py
    (`test_generation_ignores_local_modules`) says so."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover
        yield
        return
    original = getattr(providers, "_get_local_constants", None)
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    if original is None or cache is None or not hasattr(providers, "Constants"):
        yield
        return
    empty = providers.Constants()
    cache.cache.clear()
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = original
        cache.cache.clear()


class _Enough(Exception):
    """Generation has its `count` distinct var sets."""


def generate(block: FuzzBlock) -> list[dict[str, Any]]:
    """The block's var sets: the first `count` distinct ones of its seeded search (fewer when the
    strategy has fewer distinct values). Raises Hypothesis' errors for strategies that cannot
    generate (`InvalidArgument`, `Unsatisfiable`)."""
    from hypothesis import given, seed

    found: dict[str, dict[str, Any]] = {}

    @search_settings(block, shrink=False)
    @seed(block.seed)
    @given(block.strategy())
    def collect(values: dict[str, Any]) -> None:
        key = vars_key(values)
        if key not in found:
            found[key] = json.loads(json.dumps(values, ensure_ascii=False, default=str))
        if len(found) >= block.count:
            raise _Enough

    with fixed_constants():
        try:
            collect()
        except _Enough:
            pass
    return list(found.values())[: block.count]
