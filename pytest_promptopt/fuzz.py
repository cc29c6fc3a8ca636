"""A suite's `fuzz:` block: its generated template variables, and the shrinking of a failure.

Generation (`generate`, at load time) runs the block's Hypothesis strategy seeded with the
block's `seed` and collects the first `count` distinct var sets; every process that loads the
suite (each xdist worker, every run) gets the same cases. When a generated case fails,
`shrink_failure` replays the same seeded search with the case's invariants as the property, on
the same model and response cache: Hypothesis meets the first failing generated case again and
shrinks it, within `shrink` new inputs. The search is the same because every setting that steers
it is (seed, `max_examples`, phases up to the first failure), and the inputs before the first
failure pass in both runs.

Knows nothing about pytest: `items.CaseItem` asks for the shrunk input when a fuzz case fails.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

    from .cache import ResponseCache
    from .judging import Judges
    from .models.base import Model
    from .models.specs import ModelSpec
    from .records import CaseResult
    from .suite.dataset import CaseFactory
    from .suite.model import Case

__all__ = ["FuzzBlock", "FuzzOrigin", "Shrunk", "generate", "shrink_failure"]


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
        strategy = _STRATEGIES.get(self.key)
        if strategy is None:
            strategy = _STRATEGIES[self.key] = _block_strategy(self)
        return strategy


_STRATEGIES: dict[str, Any] = {}


def _block_strategy(block: FuzzBlock) -> SearchStrategy[dict[str, Any]]:
    from hypothesis import strategies as st

    from .strategies import adversarial, vars_from_examples, vars_from_schema

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


def _key(values: Any) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)


def _settings(block: FuzzBlock, shrink: bool) -> Any:
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
def _fixed_constants() -> Iterator[None]:
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

    @_settings(block, shrink=False)
    @seed(block.seed)
    @given(block.strategy())
    def collect(values: dict[str, Any]) -> None:
        key = _key(values)
        if key not in found:
            found[key] = json.loads(json.dumps(values, ensure_ascii=False, default=str))
        if len(found) >= block.count:
            raise _Enough

    with _fixed_constants():
        try:
            collect()
        except _Enough:
            pass
    return list(found.values())[: block.count]


# ----------------------------------------------------------------------------- shrinking


@dataclass
class Shrunk:
    """The smallest failing input Hypothesis found for a fuzz block on one prompt x provider."""

    first: int  # index of the first failing generated case, where shrinking started
    vars: dict[str, Any]
    case: Case
    result: CaseResult
    tried: int  # new inputs run while shrinking
    budget: int  # fuzz.shrink
    seed: int

    def summary(self) -> str:
        """One line, for an xfail reason."""
        text = _key(self.vars)
        return f"minimal failing input {text[:160] + ('...' if len(text) > 160 else '')}"

    def describe(self) -> str:
        """The lines added to a failing fuzz case's message."""
        from .report.failure import _clip, assertion_lines

        stopped = (
            f"; stopped at fuzz.shrink = {self.budget}, a smaller input may exist" if self.tried >= self.budget else ""
        )
        lines = [
            f"minimal failing input: Hypothesis shrank fuzz[{self.first}], the first failing generated case "
            f"(seed {self.seed}), trying {self.tried} inputs{stopped}:",
            "  vars: " + _clip(_key(self.vars), 300),
            "  prompt:\n    " + _clip(self.case.rendered_prompt, 300).replace("\n", "\n    "),
        ]
        if self.result.output is not None:
            lines.append("  output:\n    " + _clip(self.result.output, 300).replace("\n", "\n    "))
        lines.append("  assertions:")
        lines.extend("  " + line.replace("\n", "\n  ") for line in assertion_lines(self.result.assertions))
        return "\n".join(lines)


class _Fails(Exception):
    """The property: a case built from these vars fails its invariants."""


# (block, prompt, provider) -> (the block, kept alive so its id is not reused; the result)
_SHRUNK: dict[tuple[int, int, str], tuple[FuzzBlock, Shrunk | None]] = {}


def shrink_failure(
    case: Case, model_for: Callable[[ModelSpec], Model], cache: ResponseCache, judges: Judges | None = None
) -> Shrunk | None:
    """For a failing generated case: the minimal failing input of its block on its prompt x
    provider, run through `model_for(case.model)` and `cache` (model-graded assertions ask
    `judges`). None when the case is not generated, `fuzz.shrink` is 0, or the replay met no
    failure. Computed once per block, prompt and provider in a process."""
    from .execute import execute_case

    origin = case.fuzz
    if origin is None or origin.block.shrink <= 0:
        return None
    memo_key = (id(origin.block), case.prompt_index, case.model.key)
    if memo_key not in _SHRUNK:
        # Each input takes the case's repeats, so "fails" means what it meant for the case.
        def evaluate(c: Case) -> CaseResult:
            return execute_case(dataclasses.replace(c, repeats=case.repeats), model_for(c.model), cache, judges=judges)

        _SHRUNK[memo_key] = (origin.block, shrink(origin, evaluate))
    return _SHRUNK[memo_key][1]


def shrink(origin: FuzzOrigin, evaluate: Callable[[Case], CaseResult]) -> Shrunk | None:
    """Replay the block's seeded search with `evaluate` deciding pass/fail, and shrink the first
    failure. Inputs are evaluated once each (Hypothesis needs the same verdict every time it asks);
    after the first failure, at most `block.shrink` new inputs are evaluated, and any input past
    that budget counts as passing, so the result depends on the budget, never on time or cache."""
    from hypothesis import given, seed

    from .suite.cases import CaseError

    block, factory = origin.block, origin.factory
    order: dict[str, int] = {}  # generated var sets, in generation order, until the first failure
    memo: dict[str, tuple[Any, Any]] = {}
    state: dict[str, Any] = {"first": None, "tried": 0, "last": None}

    @_settings(block, shrink=True)
    @seed(block.seed)
    @given(block.strategy())
    def check(values: dict[str, Any]) -> None:
        key = _key(values)
        if state["first"] is None and key not in order:
            if len(order) >= block.count:
                return  # past the block's generated cases: not one of them
            order[key] = len(order)
        if key not in memo:
            if state["first"] is not None and state["tried"] >= block.shrink:
                return
            try:
                built = factory(json.loads(key), origin.index)
            except CaseError:
                memo[key] = (None, None)
            else:
                memo[key] = (built, evaluate(built))
            if state["first"] is not None:
                state["tried"] += 1
        built, result = memo[key]
        if result is not None and result.error is None and result.passed is False:
            if state["first"] is None:
                state["first"] = order[key]
            state["last"] = (json.loads(key), built, result)
            raise _Fails

    with _fixed_constants():
        try:
            check()
        except Exception:  # _Fails once shrunk; Hypothesis' own errors (Flaky, ...) leave what was found
            pass
    if state["last"] is None:
        return None
    values, built, result = state["last"]
    return Shrunk(state["first"], values, built, result, state["tried"], block.shrink, block.seed)
