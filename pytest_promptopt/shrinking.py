"""The shrinking of a failing generated (`fuzz:`) case to its minimal failing input.

When a generated case fails, `shrink_failure` replays its block's seeded search with the case's
invariants as the property, on the same model and response cache: Hypothesis meets the first
failing generated case again and shrinks it, within `shrink` new inputs. The search is the same
because every setting that steers it is (seed, `max_examples`, phases up to the first failure),
and the inputs before the first failure pass in both runs.

Knows nothing about pytest: `items.CaseItem` asks for the shrunk input when a fuzz case fails.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from .cache import ResponseCache
from .execute import execute_case
from .judging import Judges
from .models.base import Model
from .models.specs import Answers, ModelSpec
from .records import CaseResult
from .report.failure import _clip, assertion_lines
from .sandbox import Sandbox
from .suite.cases import CaseError
from .suite.fuzz import FuzzBlock, FuzzOrigin, fixed_constants, search_settings
from .suite.model import Case
from .var_strategies import vars_key

__all__ = ["Shrunk", "shrink", "shrink_failure"]


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
        text = vars_key(self.vars)
        return f"minimal failing input {text[:160] + ('...' if len(text) > 160 else '')}"

    def describe(self) -> str:
        """The lines added to a failing fuzz case's message."""
        stopped = (
            f"; stopped at fuzz.shrink = {self.budget}, a smaller input may exist" if self.tried >= self.budget else ""
        )
        lines = [
            f"minimal failing input: Hypothesis shrank fuzz[{self.first}], the first failing generated case "
            f"(seed {self.seed}), trying {self.tried} inputs{stopped}:",
            "  vars: " + _clip(vars_key(self.vars), 300),
            "  prompt:\n    " + _clip(self.case.rendered_prompt, 300).replace("\n", "\n    "),
        ]
        if self.result.output is not None:
            lines.append("  output:\n    " + _clip(self.result.output, 300).replace("\n", "\n    "))
        lines.append("  assertions:")
        lines.extend("  " + line.replace("\n", "\n  ") for line in assertion_lines(self.result.assertions))
        return "\n".join(lines)


class _Fails(Exception):
    """The property: a case built from these vars fails its invariants."""


# What `shrink_failure` remembers: (block, prompt, provider) -> (the block, kept alive so its id is
# not reused; the result). The session owns one, so a block shrinks once per process and run.
ShrinkMemo = MutableMapping[tuple[int, int, Answers], tuple[FuzzBlock, "Shrunk | None"]]


def shrink_failure(
    case: Case,
    model_for: Callable[[ModelSpec], Model],
    cache: ResponseCache,
    memo: ShrinkMemo,
    judges: Judges | None = None,
    sandbox: Sandbox | None = None,
) -> Shrunk | None:
    """For a failing generated case: the minimal failing input of its block on its prompt x
    provider, run through `model_for(case.model)` and `cache` (model-graded assertions ask
    `judges`; transforms and code checks run in `sandbox`, the session's). None when the case
    is not generated, `fuzz.shrink` is 0, or the replay met no failure. Computed once per
    block, prompt and provider's answers (its model and transform) for a `memo`."""
    origin = case.fuzz
    if origin is None or origin.block.shrink <= 0:
        return None
    memo_key = (id(origin.block), case.prompt_index, case.model.answers)
    if memo_key not in memo:
        # Each input takes the case's repeats, so "fails" means what it meant for the case.
        def evaluate(c: Case) -> CaseResult:
            return execute_case(
                dataclasses.replace(c, repeats=case.repeats), model_for(c.model), cache, judges=judges, sandbox=sandbox
            )

        memo[memo_key] = (origin.block, shrink(origin, evaluate))
    return memo[memo_key][1]


def shrink(origin: FuzzOrigin, evaluate: Callable[[Case], CaseResult]) -> Shrunk | None:
    """Replay the block's seeded search with `evaluate` deciding pass/fail, and shrink the first
    failure. Inputs are evaluated once each (Hypothesis needs the same verdict every time it asks);
    after the first failure, at most `block.shrink` new inputs are evaluated, and any input past
    that budget counts as passing, so the result depends on the budget, never on time or cache."""
    from hypothesis import given, seed

    block, factory = origin.block, origin.factory
    order: dict[str, int] = {}  # generated var sets, in generation order, until the first failure
    memo: dict[str, tuple[Any, Any]] = {}
    state: dict[str, Any] = {"first": None, "tried": 0, "last": None}

    @search_settings(block, shrink=True)
    @seed(block.seed)
    @given(block.strategy())
    def check(values: dict[str, Any]) -> None:
        key = vars_key(values)
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

    with fixed_constants():
        try:
            check()
        except Exception:  # _Fails once shrunk; Hypothesis' own errors (Flaky, ...) leave what was found
            pass
    if state["last"] is None:
        return None
    values, built, result = state["last"]
    return Shrunk(state["first"], values, built, result, state["tried"], block.shrink, block.seed)
