"""Comparing a run with a baseline run, case by case, and the paired regression gate on the differences.

Pure: no mlflow, no pytest. A baseline is a `BaselineRun` (its suites, each a list of
`CaseOutcome`s keyed by the stable `case_id`), however it was loaded (`mlflow/baseline.py`
reads one from MLflow, `baseline_files.py` one from a reviewed file). `compare_run`
returns a `BaselineComparison`, plain data that round-trips through JSON (`to_dict`/`from_dict`).

The regression gate (`regression`) reads a `SuiteComparison`: a paired test on the cases both
sides ran (McNemar's exact test on pass/fail flips, a paired bootstrap on each metric mean) says
whether the drop is more than noise, and a minimum effect says whether it matters.

Rules:
- a case is matched by suite id and `case_id`, never by name or position; a case present on
  one side only is `added` or `removed`, never guessed;
- `newly_failing`: passed in the baseline, now failed or errored; `newly_passing`: failed or
  errored in the baseline, passes now. Both list case ids, `flipped` gives both outputs;
- pass rates are passed / (passed + failed), errors excluded, as in the rest of the plugin;
  with repeats, passed samples over samples; `delta` is current minus baseline (None when either
  side has no scored case);
- with repeats, a case counts as passed when every repeat passed (its `status`): McNemar's test
  needs one pass/fail per case, and that is the case's pytest verdict;
- `metric_deltas` compare each named metric's mean over non-error cases.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "BaselineComparison",
    "BaselineRef",
    "BaselineRun",
    "CaseOutcome",
    "FlippedCase",
    "MetricDelta",
    "Regression",
    "SuiteComparison",
    "compare_run",
    "compare_suite",
    "outcome_from_result",
    "regression",
]

STATUSES = ("passed", "failed", "error")


@dataclass(frozen=True)
class BaselineRef:
    """Where the baseline comes from: `mlflow:<run_id>`, `mlflow:branch=<name>`, or a baseline
    file (`path`). Parsed from `--promptopt-baseline` by `settings.py`."""

    source: str  # "mlflow" or "file"
    run_id: str | None = None
    branch: str | None = None
    path: str | None = None

    def describe(self) -> str:
        if self.source == "file":
            return str(self.path)
        return f"mlflow:{self.run_id}" if self.run_id else f"mlflow:branch={self.branch}"


@dataclass(frozen=True)
class CaseOutcome:
    case_id: str
    name: str
    status: str  # passed | failed | error
    output: str | None = None
    named_scores: Mapping[str, float] = field(default_factory=dict)  # with repeats, means over them
    repeats: int = 1
    repeat_passed: int | None = None  # with repeats: how many passed (the status says whether all did)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def samples_passed(self) -> int:
        return self.repeat_passed if self.repeat_passed is not None else int(self.passed)


@dataclass
class BaselineSuite:
    suite_id: str
    name: str
    cases: list[CaseOutcome]
    run_id: str | None = None  # the baseline's child run, when it came from MLflow
    file: str | None = None  # the suite's file (relative to the rootdir), when a baseline file says


@dataclass
class BaselineRun:
    """A loaded baseline: its suites by suite id."""

    ref: str  # as given, e.g. "mlflow:branch=main"
    run_id: str | None
    suites: dict[str, BaselineSuite]
    # What that session's selection left out (its `promptopt.left_out` tag: "0", a count or
    # "unknown"); only a session run named by id can be partial (mlflow/baseline.py).
    left_out: str = "0"


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
    p_value: float | None = None  # McNemar's exact one-sided p-value of the pass/fail flips
    metric_p_values: dict[str, float] = field(default_factory=dict)  # paired bootstrap, per metric
    regressed: bool = False  # the regression gate's verdict
    regression_reason: str = ""
    in_baseline: bool = True  # False: a new suite (every case `added`)
    not_selected: int = 0  # baseline cases this run left out (-k, node ids), neither removed nor compared

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass_rate_delta"] = self.delta  # the MLflow metric's name, for readers of both
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteComparison:
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
    gating: bool = True  # False while --promptopt-update-baseline accepts the run as the new baseline
    baseline_left_out: str = "0"  # BaselineRun.left_out: a partial baseline's cases it did not run show as added

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "run_id": self.run_id,
            "error": self.error,
            "removed_suites": list(self.removed_suites),
            "gating": self.gating,
            "baseline_left_out": self.baseline_left_out,
            "suites": {k: v.to_dict() for k, v in self.suites.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineComparison:
        return cls(
            data["ref"],
            data.get("run_id"),
            {k: SuiteComparison.from_dict(v) for k, v in (data.get("suites") or {}).items()},
            list(data.get("removed_suites") or []),
            data.get("error"),
            bool(data.get("gating", True)),
            str(data.get("baseline_left_out") or "0"),
        )

    @classmethod
    def failed(cls, ref: str, error: str) -> BaselineComparison:
        return cls(ref, None, error=error)

    def regressions(self) -> list[SuiteComparison]:
        """The suites the regression gate failed."""
        return [s for s in self.suites.values() if s.regressed]


def outcome_from_result(result: Any) -> CaseOutcome:
    """A `results.CaseResult` (or anything with the same attributes) as a `CaseOutcome`."""
    repeats = int(getattr(result, "repeats", 1) or 1)
    return CaseOutcome(
        result.case_id,
        result.name,
        result.status,
        result.output,
        dict(result.named_scores or {}),
        repeats,
        getattr(result, "samples_passed", None) if repeats > 1 else None,
    )


def _pass_rate(cases: Iterable[CaseOutcome]) -> float | None:
    """Passed samples over the scored cases' samples (one per case without repeats)."""
    scored = [c for c in cases if c.status != "error"]
    samples = sum(max(1, c.repeats) for c in scored)
    return sum(c.samples_passed for c in scored) / samples if samples else None


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


def compare_suite(
    suite_id: str,
    name: str,
    baseline: Sequence[CaseOutcome],
    current: Sequence[CaseOutcome],
    *,
    baseline_run_id: str | None = None,
    gate: Regression | None = None,
    not_selected: Collection[str] = (),
    narrowed: bool = False,
) -> SuiteComparison:
    """Compare one suite; `baseline` empty means the suite is new (every case is `added`). With
    `gate`, the regression gate's verdict is filled in too (`regression`). `not_selected`: case
    ids this run left out (-k, node ids: selection.py), which are not `removed`; `narrowed`: its
    cases left out are not known, so no case of the baseline that did not run is removed."""
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
    comparison = SuiteComparison(
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
        removed=[c for c in before if c not in now and c not in not_selected and not narrowed],
        not_selected=sum(1 for c in before if c not in now and (c in not_selected or narrowed)),
        flipped=flipped_down + flipped_up,
        compared=sum(1 for case_id in now if case_id in before),
    )
    comparison.in_baseline = bool(baseline)
    return comparison if gate is None else regression(comparison, baseline, current, gate)


def compare_run(
    current: Mapping[str, tuple[str, Sequence[CaseOutcome]]],
    baseline: BaselineRun,
    gate: Regression | None = None,
    not_selected: Mapping[str, Collection[str]] | None = None,
    narrowed: Collection[str] = (),
) -> BaselineComparison:
    """`current`: suite id -> (suite name, its case outcomes). Suites only in the baseline are
    listed in `removed_suites`, unless this run left their cases out (`not_selected`: suite id
    -> case ids, selection.LeftOut.case_ids; `narrowed`: suites whose cases left out are not
    known). With `gate`, each suite gets the regression gate's verdict."""
    not_selected = not_selected or {}
    suites = {}
    for suite_id, (name, cases) in current.items():
        old = baseline.suites.get(suite_id)
        suites[suite_id] = compare_suite(
            suite_id,
            name,
            old.cases if old else [],
            cases,
            baseline_run_id=old.run_id if old else None,
            gate=gate if old else None,
            not_selected=not_selected.get(suite_id, ()),
            narrowed=suite_id in narrowed,
        )
    removed = sorted(s for s in baseline.suites if s not in current and s not in not_selected and s not in narrowed)
    return BaselineComparison(baseline.ref, baseline.run_id, suites, removed, baseline_left_out=baseline.left_out)


@dataclass(frozen=True)
class Regression:
    """The regression gate's settings: a drop fails the run when it is significant at `alpha`
    and larger than `min_effect` (in pass-rate or metric-mean units; for a metric with values
    beyond [-1, 1], times its largest magnitude)."""

    alpha: float = 0.05
    min_effect: float = 0.05
    seed: int = 0


def regression(
    suite: SuiteComparison,
    baseline: Sequence[CaseOutcome],
    current: Sequence[CaseOutcome],
    settings: Regression = Regression(),
) -> SuiteComparison:
    """Fill `p_value`, `metric_p_values`, `regressed` and `regression_reason` of `suite` from the
    cases both sides ran, and return it.

    Pass rate: McNemar's exact test on the flips (newly failing vs newly passing); the effect is
    the paired change of the pass rate over the compared cases. Metric means: a seeded paired
    bootstrap of each named metric over the compared cases that report it on both sides.
    """
    from .stats import mcnemar_exact, paired_bootstrap

    before = {c.case_id: c for c in baseline}
    pairs = [(before[c.case_id], c) for c in current if c.case_id in before]
    failing = sum(1 for old, new in pairs if old.passed and not new.passed)
    passing = sum(1 for old, new in pairs if not old.passed and new.passed)
    suite.p_value = mcnemar_exact(failing, passing)
    drop = (failing - passing) / len(pairs) if pairs else 0.0
    reasons = []
    if suite.p_value < settings.alpha and drop > settings.min_effect:
        # With repeats the flips are of "every repeat passed", so the drop is one of pass^k.
        what = "pass^k" if any(c.repeats > 1 for pair in pairs for c in pair) else "pass rate"
        reasons.append(
            f"{what} fell by {drop:.1%} on {len(pairs)} paired cases ({failing} newly failing, "
            f"{passing} newly passing; McNemar p = {suite.p_value:.3g} < {settings.alpha:g})"
        )
    metrics = sorted({m for old, new in pairs for m in old.named_scores if m in new.named_scores})
    for metric in metrics:
        both = [
            (float(old.named_scores[metric]), float(new.named_scores[metric]))
            for old, new in pairs
            if old.status != "error"
            and new.status != "error"
            and isinstance(old.named_scores.get(metric), (int, float))
            and isinstance(new.named_scores.get(metric), (int, float))
        ]
        if len(both) < 2:
            continue
        change, _, _, p = paired_bootstrap([b for b, _ in both], [a for _, a in both], seed=settings.seed)
        suite.metric_p_values[metric] = p
        # `min_effect` is in the units of a score from 0 to 1; a metric on another scale (a code
        # check's word count of 482, promptfoo sums code checks' scores as given) has it as a
        # share of its largest magnitude, or any significant wobble of it would fail the run.
        scale = max(1.0, max(abs(v) for pair in both for v in pair))
        if p < settings.alpha and -change > settings.min_effect * scale:
            smallest = "" if scale == 1.0 else f", more than {settings.min_effect:g} x its largest value {scale:g}"
            reasons.append(
                f"{metric} fell by {-change:.3f} on {len(both)} paired cases (paired bootstrap p = {p:.3g} < "
                f"{settings.alpha:g}{smallest})"
            )
    suite.regressed = bool(reasons)
    suite.regression_reason = "; ".join(reasons)
    return suite


# ----------------------------------------------------------------------------- baseline files
