"""Statistics shared by the reports: intervals for pass rates."""

from __future__ import annotations

import math

__all__ = ["wilson"]


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
