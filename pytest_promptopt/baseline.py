"""Comparing a run with a baseline run, case by case (issue 4: baselines from MLflow).

Pure: no mlflow, no pytest. A baseline is a `BaselineRun` (its suites, each a list of
`CaseOutcome`s keyed by the stable `case_id`), however it was loaded (`report/mlflow_baseline.py`
reads one from MLflow; file baselines, issue 7, will build the same objects). `compare_run`
returns a `BaselineComparison`, plain data that round-trips through JSON (`to_dict`/`from_dict`).

Nothing here decides a gate: the comparison is shown and logged. (The paired significance gate
of issue 7 will read the same `SuiteComparison`.)

Rules:
- a case is matched by suite id and `case_id`, never by name or position; a case present on
  one side only is `added` or `removed`, never guessed;
- `newly_failing`: passed in the baseline, now failed or errored; `newly_passing`: failed or
  errored in the baseline, passes now. Both list case ids, `flipped` gives both outputs;
- pass rates are passed / (passed + failed), errors excluded, as in the rest of the plugin;
  `delta` is current minus baseline (None when either side has no scored case);
- `metric_deltas` compare each named metric's mean over non-error cases.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["BaselineComparison", "BaselineRef", "BaselineRun", "CaseOutcome", "FlippedCase", "MetricDelta", "SuiteComparison",
           "compare_run", "compare_suite", "outcome_from_result"]

STATUSES = ("passed", "failed", "error")


@dataclass(frozen=True)
class BaselineRef:
    """Where the baseline comes from: `mlflow:<run_id>` or `mlflow:branch=<name>` (a PATH is for
    file baselines, issue 7). Parsed from `--promptopt-baseline` by `settings.py`."""

    source: str  # "mlflow"
    run_id: str | None = None
    branch: str | None = None

    def describe(self) -> str:
        return f"mlflow:{self.run_id}" if self.run_id else f"mlflow:branch={self.branch}"


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    name: str
    status: str  # passed | failed | error
    output: str | None = None
    named_scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class BaselineSuite:
    suite_id: str
    name: str
    cases: list[CaseOutcome]
    run_id: str | None = None  # the baseline's child run, when it came from MLflow


@dataclass
class BaselineRun:
    """A loaded baseline: its suites by suite id."""

    ref: str  # as given, e.g. "mlflow:branch=main"
    run_id: str | None
    suites: dict[str, BaselineSuite]


@dataclass
class FlippedCase:
    case_id: str
    name: str
    baseline_status: str
    status: str
    baseline_output: str | None
    output: str | None


@dataclass
class MetricDelta:
    baseline: float | None
    current: float | None
    delta: float | None


@dataclass
class SuiteComparison:
    suite_id: str
    name: str
    baseline_run_id: str | None
    baseline_pass_rate: float | None
    pass_rate: float | None
    delta: float | None
    metric_deltas: dict[str, MetricDelta]
    newly_failing: list[str]
    newly_passing: list[str]
    added: list[str]
    removed: list[str]
    flipped: list[FlippedCase]  # newly failing then newly passing, with both outputs
    compared: int  # cases present on both sides

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass_rate_delta"] = self.delta  # the MLflow metric's name, for readers of both
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SuiteComparison":
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["metric_deltas"] = {k: MetricDelta(**v) for k, v in (data.get("metric_deltas") or {}).items()}
        fields["flipped"] = [FlippedCase(**f) for f in data.get("flipped") or []]
        return cls(**fields)


@dataclass
class BaselineComparison:
    """The whole comparison. `error` is set (and `suites` empty) when the baseline could not be loaded."""

    ref: str
    run_id: str | None
    suites: dict[str, SuiteComparison] = field(default_factory=dict)
    removed_suites: list[str] = field(default_factory=list)  # suite ids only in the baseline
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "run_id": self.run_id, "error": self.error, "removed_suites": list(self.removed_suites),
                "suites": {k: v.to_dict() for k, v in self.suites.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BaselineComparison":
        return cls(data["ref"], data.get("run_id"), {k: SuiteComparison.from_dict(v) for k, v in (data.get("suites") or {}).items()},
                   list(data.get("removed_suites") or []), data.get("error"))

    @classmethod
    def failed(cls, ref: str, error: str) -> "BaselineComparison":
        return cls(ref, None, error=error)


def outcome_from_result(result: Any) -> CaseOutcome:
    """A `results.CaseResult` (or anything with the same attributes) as a `CaseOutcome`."""
    return CaseOutcome(result.case_id, result.name, result.status, result.output, dict(result.named_scores or {}))


def _pass_rate(cases: Iterable[CaseOutcome]) -> float | None:
    scored = [c for c in cases if c.status != "error"]
    return sum(c.passed for c in scored) / len(scored) if scored else None


def _metric_means(cases: Iterable[CaseOutcome]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for case in cases:
        if case.status == "error":
            continue
        for name, value in case.named_scores.items():
            if isinstance(value, (int, float)):
                values.setdefault(name, []).append(float(value))
    return {name: statistics.fmean(v) for name, v in values.items()}


def _diff(current: float | None, baseline: float | None) -> float | None:
    return None if current is None or baseline is None else current - baseline


def compare_suite(suite_id: str, name: str, baseline: Sequence[CaseOutcome], current: Sequence[CaseOutcome], *,
                  baseline_run_id: str | None = None) -> SuiteComparison:
    """Compare one suite; `baseline` empty means the suite is new (every case is `added`)."""
    before = {c.case_id: c for c in baseline}
    now = {c.case_id: c for c in current}
    flipped_down, flipped_up = [], []
    for case_id, case in now.items():
        old = before.get(case_id)
        if old is None or old.passed == case.passed:
            continue
        flip = FlippedCase(case_id, case.name, old.status, case.status, old.output, case.output)
        (flipped_down if old.passed else flipped_up).append(flip)
    base_rate, rate = _pass_rate(before.values()), _pass_rate(now.values())
    base_means, means = _metric_means(before.values()), _metric_means(now.values())
    metric_deltas = {
        metric: MetricDelta(base_means.get(metric), means.get(metric), _diff(means.get(metric), base_means.get(metric)))
        for metric in sorted(set(base_means) | set(means))
    }
    return SuiteComparison(
        suite_id=suite_id,
        name=name,
        baseline_run_id=baseline_run_id,
        baseline_pass_rate=base_rate,
        pass_rate=rate,
        delta=_diff(rate, base_rate),
        metric_deltas=metric_deltas,
        newly_failing=[f.case_id for f in flipped_down],
        newly_passing=[f.case_id for f in flipped_up],
        added=[case_id for case_id in now if case_id not in before],
        removed=[case_id for case_id in before if case_id not in now],
        flipped=flipped_down + flipped_up,
        compared=sum(1 for case_id in now if case_id in before),
    )


def compare_run(current: Mapping[str, tuple[str, Sequence[CaseOutcome]]], baseline: BaselineRun) -> BaselineComparison:
    """`current`: suite id -> (suite name, its case outcomes). Suites only in the baseline are
    listed in `removed_suites`."""
    suites = {}
    for suite_id, (name, cases) in current.items():
        old = baseline.suites.get(suite_id)
        suites[suite_id] = compare_suite(suite_id, name, old.cases if old else [], cases, baseline_run_id=old.run_id if old else None)
    removed = sorted(suite_id for suite_id in baseline.suites if suite_id not in current)
    return BaselineComparison(baseline.ref, baseline.run_id, suites, removed)
