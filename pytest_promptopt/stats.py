"""Statistics for noisy models: intervals for pass rates and means, paired tests for regressions."""

from __future__ import annotations

import math

__all__ = ["cluster_bootstrap", "mcnemar_exact", "mean_interval", "paired_bootstrap", "wilson"]


def wilson(passed: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval (95% by default) of `passed` successes in `n` trials; None for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0/n and n/n, which is
    where small prompt suites live.
    """
    if n <= 0:
        return None
    p = passed / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0/n and n/n the bound is exactly 0 or 1; floating point would leave 0.9999999999999999.
    low = 0.0 if passed == 0 else max(0.0, centre - half)
    high = 1.0 if passed == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(newly_failing: int, newly_passing: int) -> float:
    """One-sided exact McNemar p-value for a regression: the chance of at least `newly_failing`
    flips to fail among the discordant pairs if flips either way were equally likely.

    Only the cases that changed outcome carry information about a change (the concordant ones
    cancel out), and with few of them the exact binomial tail is the honest test.
    """
    n = newly_failing + newly_passing
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(newly_failing, n + 1))
    return min(1.0, tail / 2**n)


def paired_bootstrap(
    before: list[float], after: list[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float, float]:
    """Paired bootstrap of the mean change `after - before` over the same cases.

    Returns (mean change, 2.5th and 97.5th percentile of the resampled means, one-sided p-value
    of a drop: the share of resampled mean changes at or above zero). Seeded, so a CI run is
    reproducible.
    """
    import random

    if len(before) != len(after):
        raise ValueError("a paired comparison needs the same cases on both sides")
    diffs = [a - b for a, b in zip(after, before)]
    n = len(diffs)
    if n == 0:
        return 0.0, 0.0, 0.0, 1.0
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    at_or_above = sum(1 for m in means if m >= 0)
    return sum(diffs) / n, _percentile(means, 0.025), _percentile(means, 0.975), (at_or_above + 1) / (resamples + 1)


def cluster_bootstrap(
    clusters: list[list[float]], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """95% interval of an overall mean when the values come in clusters (a case's repeats):
    whole clusters are resampled, so repeats of one case are never taken as independent cases."""
    import random

    clusters = [c for c in clusters if c]
    if not clusters:
        return None
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        picked = rng.choices(clusters, k=len(clusters))
        means.append(sum(sum(c) for c in picked) / sum(len(c) for c in picked))
    means.sort()
    return _percentile(means, 0.025), _percentile(means, 0.975)


def _percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted list."""
    position = q * (len(ordered) - 1)
    low = int(math.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


BOOTSTRAP_MAX = 500  # beyond this many values the normal interval is as good and far cheaper


def mean_interval(values: list[float], *, seed: int = 0) -> tuple[float, float] | None:
    """95% interval of the mean of `values` (scores, mostly in [0, 1]; a code check may give 482):
    a seeded percentile bootstrap for up to `BOOTSTRAP_MAX` values, where scores are often lumpy
    (0 or 1), else the normal interval, kept within the values' range as the bootstrap's is."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    if n > BOOTSTRAP_MAX:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = 1.959964 * sd / math.sqrt(n)
        return max(min(values), mean - half), min(max(values), mean + half)
    import random

    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(1000))
    return _percentile(means, 0.025), _percentile(means, 0.975)
