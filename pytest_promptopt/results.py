"""Per-case result records and their aggregation into per-suite summaries.

A `CaseResult` is what crosses from a worker (xdist, Spark) to the controller as JSON; the
controller groups them by suite, decides the gates and hands `RunSummary` to every reporter.
A dataset suite sends one `DatasetPart` per item instead: the `CaseStats` of its rows and the
path of their per-case table, so the controller never holds the rows themselves.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .baseline import BaselineComparison, CaseOutcome, outcome_from_result
from .gates import PASS_K, PASS_RATE, GateResult, decide
from .suite.model import SuiteInfo

__all__ = ["CaseResult", "CaseStats", "DatasetPart", "RunSummary", "SuiteSummary", "merge_samples", "summarize"]


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
    # Repeats (--promptopt-repeat N): `passed` means every repeat passed, and the fields above
    # describe the case over its samples (`merge_samples`); `samples` holds each one compactly.
    repeats: int = 1
    repeat_passed: int | None = None  # None: one sample, read `passed`
    samples: list[dict[str, Any]] = field(default_factory=list)  # only with repeats > 1

    @property
    def status(self) -> str:
        return "error" if self.error else ("passed" if self.passed else "failed")

    @property
    def samples_passed(self) -> int:
        """How many of the case's samples passed (0 or 1 without repeats)."""
        if self.repeat_passed is not None:
            return self.repeat_passed
        return int(self.passed and not self.error)

    @property
    def pass_rate(self) -> float | None:
        """The case's pass rate over its repeats; None for an error."""
        return None if self.error else self.samples_passed / max(1, self.repeats)

    @property
    def flaky(self) -> bool:
        """Some repeats passed and some failed: the case neither always passes nor always fails."""
        return not self.error and 0 < self.samples_passed < self.repeats

    def sample_values(self) -> list[dict[str, Any]]:
        """The case's samples as `samples` holds them; a case without repeats is its own one sample."""
        if self.samples:
            return self.samples
        return [
            {
                "passed": self.passed,
                "score": self.score,
                "named_scores": self.named_scores,
                "latency_ms": self.latency_ms,
            }
        ]

    def to_dict(self) -> dict[str, Any]:
        # Shallow: every record is encoded once per case, and `asdict`'s deep copy was a fifth of
        # the plugin's cost per case; readers serialise or `redact` (which copies) it. The derived
        # values are written for readers of the report; `from_dict` recomputes them.
        data = {name: getattr(self, name) for name in _CASE_FIELDS}
        data.update(repeat_passed=self.samples_passed, pass_rate=self.pass_rate, flaky=self.flaky)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseResult:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


_CASE_FIELDS = tuple(CaseResult.__dataclass_fields__)


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def merge_samples(result: CaseResult, samples: Sequence[CaseResult], repeats: int) -> None:
    """Fold a case's graded samples (repeat 0, 1, ...; the run stops at the first that errored)
    into its record `result`.

    The case passes when every one of its `repeats` passed. Its output, reason and assertions are
    those of the first failing sample (what a reviewer must see), else of the first; its score,
    per-assertion scores and named metrics are means over the samples, latency the mean, tokens
    and cost the sums. An errored sample makes the case an error, as one model fault does.
    """
    result.repeats = repeats
    done = [s for s in samples if not s.error]
    errored = next((n for n, s in enumerate(samples) if s.error), None)
    result.samples = [
        {
            "passed": s.passed,
            "score": s.score,
            "reason": s.reason,
            "output": s.output,
            "named_scores": dict(s.named_scores),
            "latency_ms": s.latency_ms,
        }
        for s in done
    ]
    passing = sum(1 for s in done if s.passed)
    result.repeat_passed = passing
    shown = next((s for s in done if not s.passed), done[0] if done else None)
    if shown is not None:
        result.output, result.assertions, result.model = shown.output, shown.assertions, shown.model or result.model
        result.score = _mean([float(s.score) for s in done if s.score is not None])
        labels: dict[str, list[float]] = {}
        metrics: dict[str, list[float]] = {}
        for s in done:
            for label, value in s.scores.items():
                labels.setdefault(label, []).append(float(value))
            for name, value in s.named_scores.items():
                metrics.setdefault(name, []).append(float(value))
        result.scores = {label: math.fsum(v) / len(v) for label, v in labels.items()}
        result.named_scores = {name: math.fsum(v) / len(v) for name, v in metrics.items()}
        result.latency_ms = _mean([float(s.latency_ms) for s in done if s.latency_ms is not None])
        for name in ("prompt_tokens", "completion_tokens", "cost"):
            values = [getattr(s, name) for s in done if getattr(s, name) is not None]
            setattr(result, name, sum(values) if values else None)
    if errored is not None:
        result.error = f"repeat {errored + 1} of {repeats}: {samples[errored].error}"
        result.passed = False
        result.reason = result.error
        return
    result.passed = passing == repeats
    if shown is None:
        return
    if result.passed:
        result.reason = f"all {repeats} repeats passed"
    else:
        which = next(n for n, s in enumerate(done) if not s.passed)
        kind = "flaky: " if passing else ""
        result.reason = f"{kind}{passing} of {repeats} repeats passed; repeat {which + 1}: {shown.reason}"


# Latencies are kept exactly up to this many cases (percentiles then match a sort of the
# values); beyond, in a histogram of 1%-wide logarithmic buckets, so a 100,000-row dataset's
# stats stay a few kilobytes and merge by adding counts.
LATENCY_EXACT = 4096
_BUCKET = 1.01
_ZERO = -(10**6)  # the bucket of latencies <= 0 (the echo and fake models report 0 ms)


def _fadd(partials: list[float], x: float) -> None:
    """Add `x` to a Shewchuk partial-sum list (Python's msum recipe): `math.fsum(partials)` is
    then the correctly rounded sum, as `statistics.fmean` computes it, in any merge order."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


def _bucket(value: float) -> int:
    return _ZERO if value <= 0 else math.floor(math.log(value, _BUCKET))


def _bucket_value(index: int) -> float:
    return 0.0 if index == _ZERO else _BUCKET ** (index + 0.5)


@dataclass
class CaseStats:
    """What a suite's aggregates need from its cases, in constant space and mergeable: counts,
    score and named-metric sums, latencies for percentiles, calls, tokens, cost and time.

    >>> stats = CaseStats.of([CaseResult("a", "a", passed=True, score=1.0), CaseResult("b", "b", score=0.0)])
    >>> stats.pass_rate, stats.mean_score()
    (0.5, 0.5)
    """

    passed: int = 0
    failed: int = 0
    errors: int = 0
    score_sum: list[float] = field(default_factory=list)  # partials, see _fadd
    score_count: int = 0
    metric_sums: dict[str, list[float]] = field(default_factory=dict)
    metric_counts: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # exact, until LATENCY_EXACT values
    latency_buckets: dict[int, int] | None = None  # bucket -> count, once there were more
    calls: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # None: no case reported a cost
    duration_s: float = 0.0
    models: list[str] = field(default_factory=list)
    # Samples of the scored cases (a case without repeats is one sample); 0 in stats written
    # before repeats existed, whose pass rate is then over cases, as it was.
    samples: int = 0
    samples_passed: int = 0
    flaky: int = 0
    max_repeats: int = 1

    @classmethod
    def of(cls, results: Iterable[CaseResult]) -> CaseStats:
        stats = cls()
        for result in results:
            stats.add(result)
        return stats

    @property
    def cases(self) -> int:
        return self.passed + self.failed + self.errors

    @property
    def pass_rate(self) -> float | None:
        """Passed over scored samples (with repeats, every sample of every case counts; without,
        that is passed over scored cases): errors are counted apart, not as failures."""
        if self.samples:
            return self.samples_passed / self.samples
        scored = self.passed + self.failed
        return self.passed / scored if scored else None

    @property
    def pass_k(self) -> float | None:
        """`pass^k`: the share of scored cases whose every repeat passed (the pass rate without repeats)."""
        scored = self.passed + self.failed
        return self.passed / scored if scored else None

    def add(self, result: CaseResult) -> None:
        if result.error:
            self.errors += 1
        else:
            if result.passed:
                self.passed += 1
            else:
                self.failed += 1
            self.samples += max(1, result.repeats)
            self.samples_passed += result.samples_passed
            self.flaky += result.flaky
            self.max_repeats = max(self.max_repeats, result.repeats)
            # Means are over samples, so every repeat weighs as much as a case without repeats.
            for sample in result.sample_values():
                if sample.get("score") is not None:
                    _fadd(self.score_sum, float(sample["score"]))
                    self.score_count += 1
                for name, value in (sample.get("named_scores") or {}).items():
                    _fadd(self.metric_sums.setdefault(name, []), float(value))
                    self.metric_counts[name] = self.metric_counts.get(name, 0) + 1
        if result.samples:
            for sample in result.samples:
                if sample.get("latency_ms") is not None:
                    self._add_latency(float(sample["latency_ms"]))
        elif result.latency_ms is not None:
            self._add_latency(float(result.latency_ms))
        self.calls += result.calls
        self.cache_hits += result.cache_hits
        self.prompt_tokens += result.prompt_tokens or 0
        self.completion_tokens += result.completion_tokens or 0
        if result.cost is not None:
            self.cost = float(result.cost) if self.cost is None else self.cost + float(result.cost)
        self.duration_s += result.duration_s
        if result.model and result.model not in self.models:
            bisect.insort(self.models, result.model)

    def _add_latency(self, value: float) -> None:
        if self.latency_buckets is None:
            self.latencies.append(value)
            if len(self.latencies) <= LATENCY_EXACT:
                return
            self.latency_buckets, values, self.latencies = {}, self.latencies, []
        else:
            values = [value]
        for v in values:
            key = _bucket(v)
            self.latency_buckets[key] = self.latency_buckets.get(key, 0) + 1

    def merge(self, other: CaseStats) -> CaseStats:
        """A new `CaseStats` of both sides' cases."""
        merged = CaseStats.from_dict(self.to_dict())
        merged.passed += other.passed
        merged.failed += other.failed
        merged.errors += other.errors
        for x in other.score_sum:
            _fadd(merged.score_sum, x)
        merged.score_count += other.score_count
        for name, partials in other.metric_sums.items():
            for x in partials:
                _fadd(merged.metric_sums.setdefault(name, []), x)
            merged.metric_counts[name] = merged.metric_counts.get(name, 0) + other.metric_counts.get(name, 0)
        if other.latency_buckets is None:
            for value in other.latencies:
                merged._add_latency(value)
        else:
            if merged.latency_buckets is None:
                merged.latency_buckets, values, merged.latencies = {}, merged.latencies, []
                for value in values:
                    key = _bucket(value)
                    merged.latency_buckets[key] = merged.latency_buckets.get(key, 0) + 1
            for key, count in other.latency_buckets.items():
                merged.latency_buckets[key] = merged.latency_buckets.get(key, 0) + count
        merged.calls += other.calls
        merged.cache_hits += other.cache_hits
        merged.prompt_tokens += other.prompt_tokens
        merged.completion_tokens += other.completion_tokens
        if other.cost is not None:
            merged.cost = other.cost if merged.cost is None else merged.cost + other.cost
        merged.duration_s += other.duration_s
        merged.models = sorted(set(merged.models) | set(other.models))
        (mine, mine_passed), (theirs, theirs_passed) = self._sample_counts(), other._sample_counts()
        merged.samples, merged.samples_passed = mine + theirs, mine_passed + theirs_passed
        merged.flaky += other.flaky
        merged.max_repeats = max(merged.max_repeats, other.max_repeats)
        return merged

    def _sample_counts(self) -> tuple[int, int]:
        """(samples, passed samples); stats written before repeats existed count their cases."""
        return (self.samples, self.samples_passed) if self.samples else (self.passed + self.failed, self.passed)

    def mean_score(self) -> float | None:
        return math.fsum(self.score_sum) / self.score_count if self.score_count else None

    def metric_means(self) -> dict[str, float]:
        return {name: math.fsum(self.metric_sums[name]) / count for name, count in self.metric_counts.items() if count}

    def latency_percentile(self, q: float) -> float | None:
        """The value at rank round(q * (n - 1)); from the histogram (within 1%) past LATENCY_EXACT."""
        if self.latency_buckets is None:
            if not self.latencies:
                return None
            values = sorted(self.latencies)
            return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]
        total = sum(self.latency_buckets.values())
        if not total:
            return None
        rank = min(total - 1, max(0, round(q * (total - 1))))
        seen = 0
        for key in sorted(self.latency_buckets):
            seen += self.latency_buckets[key]
            if seen > rank:
                return _bucket_value(key)
        return None  # unreachable: the ranks add up to total

    def totals(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "duration_s": self.duration_s,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (it crosses xdist): bucket keys become strings."""
        data = asdict(self)
        if self.latency_buckets is not None:
            data["latency_buckets"] = {str(k): v for k, v in self.latency_buckets.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseStats:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["score_sum"] = [float(x) for x in fields.get("score_sum", [])]
        fields["metric_sums"] = {k: [float(x) for x in v] for k, v in (fields.get("metric_sums") or {}).items()}
        fields["metric_counts"] = dict(fields.get("metric_counts") or {})
        fields["latencies"] = [float(x) for x in fields.get("latencies", [])]
        fields["models"] = list(fields.get("models") or [])
        buckets = fields.get("latency_buckets")
        fields["latency_buckets"] = None if buckets is None else {int(k): int(v) for k, v in buckets.items()}
        return cls(**fields)


@dataclass
class DatasetPart:
    """One dataset item's record (one prompt x provider of a dataset suite): its rows' stats and
    where their per-case table is. A suite's parts merge into one (`SuiteSummary.dataset`)."""

    stats: CaseStats
    cases_file: str  # the suite's per-case Parquet dataset (a folder, one part per item)
    source: str = ""  # the data path or table, as written in the suite
    templates: dict[int, str] = field(default_factory=dict)  # prompt index -> template

    # What the progress line reads from each record (report/progress.py).
    @property
    def calls(self) -> int:
        return self.stats.calls

    @property
    def cache_hits(self) -> int:
        return self.stats.cache_hits

    @property
    def error(self) -> str | None:
        return f"{self.stats.errors} rows errored" if self.stats.errors else None

    def merge(self, other: DatasetPart) -> DatasetPart:
        return DatasetPart(
            self.stats.merge(other.stats),
            self.cases_file,
            self.source or other.source,
            {**other.templates, **self.templates},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats.to_dict(),
            "cases_file": self.cases_file,
            "source": self.source,
            "templates": {str(k): v for k, v in self.templates.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetPart:
        return cls(
            CaseStats.from_dict(data["stats"]),
            str(data["cases_file"]),
            str(data.get("source") or ""),
            {int(k): str(v) for k, v in (data.get("templates") or {}).items()},
        )


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
        return self.stats.metric_means()

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


@dataclass
class RunSummary:
    suites: list[SuiteSummary]
    baseline: BaselineComparison | None = None  # set by the controller with --promptopt-baseline
    repairs: list[Any] = field(default_factory=list)  # repair/result.RepairResult, with --promptopt-repair

    def suite_outcomes(self) -> dict[str, tuple[str, list[CaseOutcome]]]:
        """Each suite's case outcomes by suite id, the current side of `baseline.compare_run`.
        Dataset suites are left out: their rows are in a file, not in the summary."""
        return {
            s.info.id: (s.info.name, [outcome_from_result(r) for r in s.results])
            for s in self.suites
            if s.dataset is None
        }

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


def summarize(records: Iterable[tuple[SuiteInfo, CaseResult | DatasetPart]], gate_rule: str = "point") -> RunSummary:
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
    return RunSummary(suites)
