"""Statistics with known answers (pytest_promptopt/stats.py)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_promptopt.stats import (
    BOOTSTRAP_MAX,
    cluster_bootstrap,
    mcnemar_exact,
    mean_interval,
    paired_bootstrap,
    wilson,
)


def test_wilson_interval_known_values() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 4)[0] == 0.0 and wilson(4, 4)[1] == 1.0 and wilson(0, 0) is None


@given(st.integers(0, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))).filter(lambda t: t[1] > 0))
def test_wilson_interval_contains_the_estimate_and_stays_in_bounds(case: tuple[int, int]) -> None:
    passed, n = case
    low, high = wilson(passed, n)
    assert 0.0 <= low <= passed / n <= high <= 1.0


@pytest.mark.parametrize(
    ("failing", "passing", "expected"),
    [
        (5, 0, 1 / 32),  # all five flips are to fail: 0.5^5
        (3, 3, 42 / 64),  # P(X >= 3), X ~ Bin(6, 1/2)
        (0, 4, 1.0),
        (0, 0, 1.0),  # nothing changed: no evidence
        (10, 2, 79 / 4096),  # P(X >= 10), X ~ Bin(12, 1/2) = (66 + 12 + 1) / 4096
    ],
)
def test_mcnemar_exact_is_the_binomial_tail_of_the_discordant_pairs(
    failing: int, passing: int, expected: float
) -> None:
    assert math.isclose(mcnemar_exact(failing, passing), expected)


def test_paired_bootstrap_sees_a_real_drop_and_not_noise() -> None:
    before = [1.0] * 40
    after = [1.0] * 20 + [0.0] * 20  # half the cases now fail
    change, low, high, p = paired_bootstrap(before, after, seed=1)
    assert change == -0.5 and high < 0 and p < 0.01
    same = [1.0, 0.0] * 20
    change, low, high, p = paired_bootstrap(same, same, seed=1)
    assert change == 0.0 and low == high == 0.0 and p == 1.0
    assert paired_bootstrap(before, after, seed=1) == paired_bootstrap(before, after, seed=1)  # seeded
    with pytest.raises(ValueError, match="same cases"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_cluster_bootstrap_is_wider_than_treating_repeats_as_cases() -> None:
    # 10 cases x 5 repeats; each case always passes or always fails: the repeats add no information
    clusters = [[1.0] * 5 if i % 2 else [0.0] * 5 for i in range(10)]
    low, high = cluster_bootstrap(clusters, seed=0)
    naive = wilson(25, 50)
    assert low <= 0.5 <= high and (high - low) > (naive[1] - naive[0])
    assert cluster_bootstrap([], seed=0) is None


@pytest.mark.parametrize("n", [40, BOOTSTRAP_MAX + 1], ids=["bootstrap", "normal"])
def test_a_mean_scores_interval_holds_the_mean_of_scores_outside_0_1(n: int) -> None:
    """A code check may score 482 or -2 (promptfoo does not clip it): the interval of the mean
    score holds the mean and stays within the scores' range, bootstrap or normal alike (the
    normal one was clipped to [0, 1], which put 482 above an interval ending at 1)."""
    values = [482.0 if i % 2 else -2.0 for i in range(n)]
    low, high = mean_interval(values)
    mean = sum(values) / n
    assert -2.0 <= low < mean < high <= 482.0
    low, high = mean_interval([0.0, 1.0] * (n // 2) + [1.0] * (n % 2))
    assert 0.0 <= low < high <= 1.0
