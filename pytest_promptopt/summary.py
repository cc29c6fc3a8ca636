"""A run's per-suite summaries: `SuiteSummary` (a suite's cases, aggregates, intervals and gate
verdicts) and `RunSummary`, which the controller builds once and every reporter reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .baseline import BaselineComparison, CaseOutcome, outcome_from_result
from .case_stats import CaseStats, DatasetPart
from .gates import PASS_K, PASS_RATE, GateResult, decide
from .mathexpr import derived_values
from .records import CaseResult
from .suite_info import SuiteInfo

__all__ = ["RunSummary", "SuiteSummary", "incomplete_reason", "suite_outcomes", "summarize", "summarize_suites"]

_EXIT_STATUSES = {2: "interrupted", 3: "internal error", 4: "usage error", 5: "no tests collected"}


def incomplete_reason(exit_status: int | None, stopped_early: bool = False) -> str | None:
    """Why pytest did not run the whole session, or None: interrupted (exit status 2), an
    internal error (3), a usage error (4), or stopped at -x / --maxfail (`stopped_early`; its exit
    status is still 1). Such a run holds only the cases that ran: it decides nothing, is never a
    baseline and writes no baseline file. None also when the status is unknown (an older run)."""
    if exit_status not in (None, 0, 1):
        return f"pytest exit status {exit_status}: {_EXIT_STATUSES.get(exit_status, 'ended early')}"
    return "pytest stopped at -x / --maxfail" if stopped_early else None


@dataclass
class SuiteSummary:
    """A suite's cases and verdicts. Every aggregate comes from `stats`: built from `results`
    for ordinary suites, from the merged `DatasetPart`s for a dataset suite (whose `results`
    stay empty: its rows are in `cases_file`)."""

    info: SuiteInfo
    results: list[CaseResult]
    gates: list[GateResult]
    models: list[str]
    dataset: DatasetPart | None = None
    _stats: tuple[int, int, CaseStats] | None = field(default=None, init=False, repr=False, compare=False)
    _intervals: tuple[int, dict[str, tuple[float, float] | None]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def stats(self) -> CaseStats:
        key = (id(self.results), len(self.results))
        if self._stats is None or self._stats[:2] != key:
            stats = CaseStats.of(self.results)
            if self.dataset is not None:
                stats = self.dataset.stats.merge(stats) if self.results else self.dataset.stats
            self._stats = (*key, stats)
        return self._stats[2]

    @property
    def cases(self) -> int:
        return self.stats.cases

    @property
    def cases_file(self) -> str | None:
        return self.dataset.cases_file if self.dataset is not None else None

    @property
    def passed(self) -> int:
        return self.stats.passed

    @property
    def failed(self) -> int:
        return self.stats.failed

    @property
    def errors(self) -> int:
        return self.stats.errors

    @property
    def pass_rate(self) -> float | None:
        """Passed over scored cases: errors are counted apart, not as failures."""
        return self.stats.pass_rate

    @property
    def pass_k(self) -> float | None:
        """`pass^k`: the share of scored cases whose every repeat passed."""
        return self.stats.pass_k

    @property
    def repeats(self) -> int:
        """Samples per case (the most any case took; 1 without repeats)."""
        return self.stats.max_repeats

    @property
    def flaky(self) -> list[CaseResult]:
        """The cases whose repeats neither all passed nor all failed."""
        return [r for r in self.results if r.flaky]

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def metric_means(self) -> dict[str, float]:
        """Each named metric's mean over the cases that report it, and the suite's derived
        metrics (promptfoo's `derivedMetrics`: expressions over the metrics' sums, each score
        times its weight as promptfoo sums them, and `__count`, the cases run, errors included)."""
        means = self.stats.metric_means()
        if self.info.derived_metrics:
            stats = self.stats
            sums = {name: math.fsum(parts) for name, parts in stats.metric_weighted_sums.items()}
            means.update(derived_values(self.info.derived_metrics, sums, stats.cases))
        return means

    def intervals(self) -> dict[str, tuple[float, float] | None]:
        """95% intervals: `pass_rate` and each metric mean, and `pass^k` with repeats or a gate on it.

        Without repeats the pass rate's is Wilson's over the scored cases and a metric mean's a
        seeded bootstrap over the cases. With repeats a case's samples are not independent cases
        (a flaky case is flaky every run), so both are a seeded cluster bootstrap over cases, each
        case's samples resampled together; `pass^k` is one pass/fail per case, so Wilson's over
        cases. None for fewer than two cases (nothing says how much cases differ). A dataset
        suite (rows in a file) gets the pass rate's and no metric intervals."""
        if self._intervals is not None and self._intervals[0] == len(self.results):
            return self._intervals[1]
        from .stats import cluster_bootstrap, mean_interval, wilson

        pass_k = wilson(self.passed, self.passed + self.failed)
        found: dict[str, tuple[float, float] | None] = {PASS_RATE: pass_k}
        if self.repeats > 1 or any(g.name == PASS_K for g in self.info.gates):
            found[PASS_K] = pass_k
        if self.dataset is None:
            scored = [r for r in self.results if not r.error]
            if self.repeats > 1:
                clusters = [[float(bool(s["passed"])) for s in r.sample_values()] for r in scored]
                found[PASS_RATE] = cluster_bootstrap(clusters) if len(clusters) > 1 else None
                for name in self.metric_means():
                    clusters = [
                        [
                            float(s["named_scores"][name])
                            for s in r.sample_values()
                            if name in (s.get("named_scores") or {})
                        ]
                        for r in scored
                    ]
                    clusters = [c for c in clusters if c]
                    found[name] = cluster_bootstrap(clusters) if len(clusters) > 1 else None
            else:
                values: dict[str, list[float]] = {}
                for result in scored:
                    for name, value in result.named_scores.items():
                        values.setdefault(name, []).append(float(value))
                for name in self.metric_means():
                    found[name] = mean_interval(values.get(name, []))
        self._intervals = (len(self.results), found)
        return found

    def mean_score(self) -> float | None:
        return self.stats.mean_score()

    def latency_percentile(self, q: float) -> float | None:
        return self.stats.latency_percentile(q)

    def totals(self) -> dict[str, Any]:
        return self.stats.totals()


@dataclass(frozen=True)
class RunSummary:
    """A whole run, as every reporter reads it: built once by the controller after the gates, the
    baseline comparison and the repairs, and never changed afterwards."""

    suites: tuple[SuiteSummary, ...]
    baseline: BaselineComparison | None = None  # --promptopt-baseline (or the default baseline file)
    repairs: tuple[Any, ...] = ()  # repair_result.RepairResult, with --promptopt-repair
    exit_status: int | None = None  # the session's, after the gates (None when not known, e.g. a rebuilt report)

    def suite_outcomes(self) -> dict[str, tuple[str, list[CaseOutcome]]]:
        """Each suite's case outcomes by suite id, the current side of `baseline.compare_run`."""
        return suite_outcomes(self.suites)

    @property
    def gates_passed(self) -> bool:
        """Every suite's gates pass, and the regression gate found no significant drop."""
        return all(s.gates_passed for s in self.suites) and not self.regressions()

    def regressions(self) -> list[Any]:
        """Suites whose baseline comparison the regression gate failed (`baseline.SuiteComparison`)."""
        if self.baseline is None or not self.baseline.gating:
            return []
        return self.baseline.regressions()

    def failed_gates(self) -> list[tuple[SuiteSummary, GateResult]]:
        return [(s, g) for s in self.suites for g in s.gates if not g.passed]


def suite_outcomes(suites: Iterable[SuiteSummary]) -> dict[str, tuple[str, list[CaseOutcome]]]:
    """Each suite's case outcomes by suite id. Dataset suites are left out: their rows are in a
    file, not in the summary."""
    return {s.info.id: (s.info.name, [outcome_from_result(r) for r in s.results]) for s in suites if s.dataset is None}


def summarize_suites(
    records: Iterable[tuple[SuiteInfo, CaseResult | DatasetPart]], gate_rule: str = "point"
) -> tuple[SuiteSummary, ...]:
    """Group case results by suite; a suite file's results in file order, Python tests by node
    id. A dataset suite's parts (one per prompt x provider item) merge into one."""
    grouped: dict[str, tuple[SuiteInfo, list[CaseResult], list[DatasetPart]]] = {}
    for info, record in records:
        entry = grouped.setdefault(info.id, (info, [], []))
        (entry[2] if isinstance(record, DatasetPart) else entry[1]).append(record)
    suites = []
    for info, results, parts in grouped.values():
        results.sort(key=lambda r: (r.position if r.position is not None else -1, r.nodeid))
        dataset = None
        for part in parts:
            dataset = part if dataset is None else dataset.merge(part)
        summary = SuiteSummary(info, results, [], [], dataset)
        summary.models = list(summary.stats.models)
        intervals = summary.intervals() if any((g.rule or gate_rule) != "point" for g in info.gates) else None
        summary.gates = [
            decide(g, summary.pass_rate, summary.metric_means(), intervals, gate_rule, pass_k=summary.pass_k)
            for g in info.gates
        ]
        suites.append(summary)
    suites.sort(key=lambda s: s.info.id)
    return tuple(suites)


def summarize(records: Iterable[tuple[SuiteInfo, CaseResult | DatasetPart]], gate_rule: str = "point") -> RunSummary:
    """A `RunSummary` of `records` alone (no baseline, no repairs)."""
    return RunSummary(summarize_suites(records, gate_rule))
