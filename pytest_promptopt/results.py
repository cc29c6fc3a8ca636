"""Per-case result records and their aggregation into per-suite summaries.

A `CaseResult` is what crosses from a worker (xdist, Spark) to the controller as JSON; the
controller groups them by suite, decides the gates and hands `RunSummary` to every reporter.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from .baseline import BaselineComparison, CaseOutcome, outcome_from_result
from .gates import GateResult, decide
from .suite.model import SuiteInfo

__all__ = ["CaseResult", "RunSummary", "SuiteSummary", "summarize"]


@dataclass
class CaseResult:
    """What happened to one case: its output, verdict, scores, or the error that stopped it."""

    case_id: str
    name: str
    nodeid: str = ""
    vars: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = ""
    output: str | None = None
    passed: bool = False
    error: str | None = None
    score: float | None = None
    reason: str = ""
    scores: dict[str, float] = field(default_factory=dict)
    named_scores: dict[str, float] = field(default_factory=dict)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    prompt_index: int | None = None
    test_index: int | None = None
    position: int | None = None  # order of the case in its suite file (None for Python tests)
    model: str = ""
    template: str | None = None  # the prompt template before rendering (suite-file cases)
    registry_prompts: list[str] = field(default_factory=list)  # `prompts:/name/<version>` of registered prompts used
    model_params: dict[str, Any] = field(default_factory=dict)  # redacted: records travel and get logged
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: float | None = None
    calls: int = 0
    cache_hits: int = 0
    duration_s: float = 0.0

    @property
    def status(self) -> str:
        return "error" if self.error else ("passed" if self.passed else "failed")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CaseResult":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class SuiteSummary:
    info: SuiteInfo
    results: list[CaseResult]
    gates: list[GateResult]
    models: list[str]

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.status == "passed")

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.status == "failed")

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.status == "error")

    @property
    def pass_rate(self) -> float | None:
        """Passed over scored cases: errors are counted apart, not as failures."""
        scored = self.passed + self.failed
        return self.passed / scored if scored else None

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def metric_means(self) -> dict[str, float]:
        values: dict[str, list[float]] = {}
        for result in self.results:
            if result.error:
                continue
            for name, value in result.named_scores.items():
                values.setdefault(name, []).append(value)
        return {name: statistics.fmean(v) for name, v in values.items()}

    def mean_score(self) -> float | None:
        scores = [r.score for r in self.results if r.score is not None and not r.error]
        return statistics.fmean(scores) if scores else None

    def latency_percentile(self, q: float) -> float | None:
        values = sorted(r.latency_ms for r in self.results if r.latency_ms is not None)
        if not values:
            return None
        index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
        return values[index]

    def totals(self) -> dict[str, Any]:
        costs = [r.cost for r in self.results if r.cost is not None]
        return {
            "calls": sum(r.calls for r in self.results),
            "cache_hits": sum(r.cache_hits for r in self.results),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in self.results),
            "completion_tokens": sum(r.completion_tokens or 0 for r in self.results),
            "cost": sum(costs) if costs else None,
            "duration_s": sum(r.duration_s for r in self.results),
        }


@dataclass
class RunSummary:
    suites: list[SuiteSummary]
    baseline: BaselineComparison | None = None  # set by the controller with --promptopt-baseline

    def suite_outcomes(self) -> dict[str, tuple[str, list[CaseOutcome]]]:
        """Each suite's case outcomes by suite id, the current side of `baseline.compare_run`."""
        return {s.info.id: (s.info.name, [outcome_from_result(r) for r in s.results]) for s in self.suites}

    @property
    def gates_passed(self) -> bool:
        return all(s.gates_passed for s in self.suites)

    def failed_gates(self) -> list[tuple[SuiteSummary, GateResult]]:
        return [(s, g) for s in self.suites for g in s.gates if not g.passed]


def summarize(records: Iterable[tuple[SuiteInfo, CaseResult]]) -> RunSummary:
    """Group case results by suite; a suite file's results in file order, Python tests by node id."""
    grouped: dict[str, tuple[SuiteInfo, list[CaseResult]]] = {}
    for info, result in records:
        grouped.setdefault(info.id, (info, []))[1].append(result)
    suites = []
    for info, results in grouped.values():
        results.sort(key=lambda r: (r.position if r.position is not None else -1, r.nodeid))
        summary = SuiteSummary(info, results, [], sorted({r.model for r in results if r.model}))
        summary.gates = [decide(g, summary.pass_rate, summary.metric_means()) for g in info.gates]
        suites.append(summary)
    suites.sort(key=lambda s: s.info.id)
    return RunSummary(suites)
