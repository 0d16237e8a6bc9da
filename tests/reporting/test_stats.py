"""Statistics over seeds against hand-computed values: mean, std, Student-t interval, paired t-test."""

from __future__ import annotations

import math

import pytest

from sparseticket.reporting.stats import Summary, format_summary, paired_test, summary


def _t3_two_sided_p(t: float) -> float:
    """Two-sided p of Student's t with 3 degrees of freedom, closed form (independent of scipy)."""
    x = abs(t) / math.sqrt(3)
    return 1 - (2 / math.pi) * (x / (1 + x * x) + math.atan(x))


def test_summary_of_one_to_four_by_hand():
    mean, std, low, high, n = summary([1, 2, 3, 4])
    assert n == 4 and mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3), rel=1e-12)  # sum of squares 5, ddof 1
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3) from tables times std / sqrt(4)
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-9)


def test_two_values_interval_uses_the_cauchy_quantile():
    # t with 1 degree of freedom is the Cauchy distribution: quantile 0.975 = tan(0.475 pi) = 12.706...
    result = summary([1.0, 3.0])
    half = math.tan(0.475 * math.pi) * math.sqrt(2) / math.sqrt(2)
    assert result.mean == 2.0 and result.std == pytest.approx(math.sqrt(2))
    assert (result.low, result.high) == pytest.approx((2 - half, 2 + half), rel=1e-9)


def test_fewer_than_two_values_have_no_spread():
    assert summary([]) == Summary(None, None, None, None, 0)
    assert summary([0.7]) == Summary(0.7, None, None, None, 1)
    assert format_summary(summary([])) == "n/a" and format_summary(summary([0.7])) == "0.700"


def test_constant_values_have_zero_width_interval():
    assert summary([0.5, 0.5, 0.5]) == Summary(0.5, 0.0, 0.5, 0.5, 3)


def test_non_finite_values_are_an_error():
    with pytest.raises(ValueError, match="values must be finite"):
        summary([1.0, math.nan])


def test_format_summary():
    assert format_summary(summary([1, 2, 3, 4]), 2) == "2.50 ± 1.29 [0.45, 4.55]"
    assert format_summary(summary([1, 2, 3, 4]), 1, interval=False) == "2.5 ± 1.3"


def test_paired_t_test_three_degrees_of_freedom_by_hand():
    a, b = [2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0]  # differences 1, 2, 3, 4
    test = paired_test(a, b)
    t = 2.5 / (math.sqrt(5 / 3) / 2)
    assert test.n == 4 and test.difference.mean == 2.5
    assert test.p_value == pytest.approx(_t3_two_sided_p(t), rel=1e-9)
    assert test.significant is (test.p_value < 0.05) and test.reason is None
    swapped = paired_test(b, a)  # the test is symmetric; the difference changes sign
    assert swapped.p_value == pytest.approx(test.p_value) and swapped.difference.mean == -2.5


def test_paired_t_test_one_degree_of_freedom_by_hand():
    test = paired_test([1.0, 5.0], [0.0, 2.0])  # differences 1, 3: t = 2 / (sqrt(2) / sqrt(2)) = 2
    assert test.p_value == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-9)  # Cauchy: 0.2952
    assert test.significant is False


def test_large_consistent_difference_is_significant():
    test = paired_test([10.1, 10.3, 9.9, 10.2, 10.0], [1.0, 1.1, 0.9, 1.2, 0.8])
    assert test.significant is True and test.p_value < 1e-6


@pytest.mark.parametrize("a, b, words", [
    ([1.0], [2.0], "needs >= 2 seeds"),
    ([], [], "needs >= 2 seeds"),
    ([2.0, 3.0, 4.0], [1.0, 2.0, 3.0], "zero variance"),
    ([5.0, 5.0], [5.0, 5.0], "every paired difference equals 0"),
])
def test_degenerate_pairs_report_a_reason_not_nan(a, b, words):
    test = paired_test(a, b)
    assert test.p_value is None and test.significant is None and words in test.reason


def test_pairs_must_match_in_length():
    with pytest.raises(ValueError, match="a and b must pair up"):
        paired_test([1.0, 2.0], [1.0])
