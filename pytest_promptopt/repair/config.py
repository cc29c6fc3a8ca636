"""Repair settings: the run's (command line > ini) and a suite's `repair:` block, resolved per suite.

Precedence: the command line wins over the suite's block, which wins over the ini file, which
wins over the defaults here. So a suite can say which optimiser suits its cases, and a person at
the terminal can still override it for one run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEMO_OPTIMIZERS", "INSTRUCTION_OPTIMIZERS", "OPTIMIZERS", "RepairConfig", "RepairSettings"]

DEMO_OPTIMIZERS = ("labeled", "bootstrap", "random-search")
INSTRUCTION_OPTIMIZERS = ("gepa", "miprov2")
OPTIMIZERS = ("auto", *DEMO_OPTIMIZERS, *INSTRUCTION_OPTIMIZERS)

DEFAULT_BUDGET = 300
DEFAULT_HELDOUT = 0.4
DEFAULT_MAX_DEMOS = 4
RANDOM_SEARCH_MIN_CASES = 16  # optimiser cases from which `auto` searches over demo sets


@dataclass(frozen=True)
class Given:
    """One run-level value and where it came from: "cli", "ini", or "" (not given)."""

    value: Any = None
    source: str = ""


@dataclass(frozen=True)
class RepairSettings:
    """The run's repair options (`--promptopt-repair*`). `suites` empty: every suite whose gates failed."""

    suites: tuple[str, ...] = ()
    optimizer: Given = Given()
    budget: Given = Given()
    seed: Given = Given()
    model: Any = None  # ModelSpec of --promptopt-repair-model: the proposer of instruction optimisers
    apply: bool = False

    def wants(self, suite_id: str, suite_name: str, gates_passed: bool) -> bool:
        if self.suites:
            return suite_id in self.suites or suite_name in self.suites
        return not gates_passed


@dataclass(frozen=True)
class RepairConfig:
    """How one suite is repaired, every value resolved."""

    optimizer: str = "auto"
    budget: int = DEFAULT_BUDGET
    seed: int = 0
    heldout: float = DEFAULT_HELDOUT
    max_demos: int = DEFAULT_MAX_DEMOS
    label: str | None = None  # template of the answer a demonstration shows (e.g. "{{antonym}}")
    candidates: int = 6  # random search: demo sets tried besides zero-shot / labeled-only / plain bootstrap
    sources: Mapping[str, str] = field(default_factory=dict)  # key -> cli / suite / ini / default

    @classmethod
    def resolve(cls, run: RepairSettings, block: Mapping[str, Any] | None) -> RepairConfig:
        block = dict(block or {})
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for key, given in (("optimizer", run.optimizer), ("budget", run.budget), ("seed", run.seed)):
            if given.source == "cli":
                values[key], sources[key] = given.value, "cli"
            elif key in block:
                values[key], sources[key] = block[key], "suite"
            elif given.source == "ini":
                values[key], sources[key] = given.value, "ini"
        for key in ("heldout", "max_demos", "label", "candidates"):
            if key in block:
                values[key], sources[key] = block[key], "suite"
        return cls(**values, sources=sources)

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "budget": self.budget,
            "seed": self.seed,
            "heldout": self.heldout,
            "max_demos": self.max_demos,
            "label": self.label,
        }
