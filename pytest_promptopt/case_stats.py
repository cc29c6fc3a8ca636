"""Tallies of cases in constant space: `CaseStats` (counts, sums, latencies, tokens), mergeable
across items and processes, and `DatasetPart`, the record a dataset item sends instead of its rows.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .records import CaseResult
from .wording import counted

__all__ = ["CaseStats", "DatasetPart"]


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
    # Each sample's named score times its weight (promptfoo's prompt-level namedScores, which
    # its derivedMetrics read); partials, as metric_sums.
    metric_weighted_sums: dict[str, list[float]] = field(default_factory=dict)
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
                weights = sample.get("named_weights") or {}
                for name, value in (sample.get("named_scores") or {}).items():
                    _fadd(self.metric_sums.setdefault(name, []), float(value))
                    weighted = float(value) * float(weights.get(name, 1.0))
                    _fadd(self.metric_weighted_sums.setdefault(name, []), weighted)
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
        for name, partials in other.metric_weighted_sums.items():
            for x in partials:
                _fadd(merged.metric_weighted_sums.setdefault(name, []), x)
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
        # stats written before the weighted sums existed weigh every score 1
        weighted = fields.get("metric_weighted_sums") or fields["metric_sums"]
        fields["metric_weighted_sums"] = {k: [float(x) for x in v] for k, v in weighted.items()}
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
        return f"{counted(self.stats.errors, 'row')} errored" if self.stats.errors else None

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
