"""Statistics over seeds: mean, sample standard deviation, Student-t 95% interval, paired t-test.

The paired test is the two-sided paired t-test (``scipy.stats.ttest_rel``), not the Wilcoxon
signed-rank test: with the 5 seeds a comparison usually has, the exact Wilcoxon test cannot go
below p = 0.0625, so it could never call a difference significant at 0.05.

Nothing here returns NaN for a degenerate input: fewer than 2 values (or pairs) give ``None``
for the spread, the interval and the p-value, and a ``reason`` says why; so do paired
differences that are all equal (zero variance: the t statistic is undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

ALPHA = 0.05  # significance level of ``PairedTest.significant``


class Summary(NamedTuple):
    """Mean, sample std (ddof = 1) and the Student-t 95% interval of the mean of ``n`` values."""

    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    n: int


class PairedTest(NamedTuple):
    """Paired difference ``a - b`` over ``n`` pairs: its mean, 95% interval and the t-test's p-value."""

    n: int
    difference: Summary
    p_value: float | None
    reason: str | None  # why p_value is None

    @property
    def significant(self) -> bool | None:
        """p < 0.05, or None when the test is undefined."""
        return None if self.p_value is None else self.p_value < ALPHA


def _finite(values: Sequence[float], name: str) -> list[float]:
    """The values as floats; ValueError naming ``name`` on NaN or infinity."""
    numbers = [float(value) for value in values]
    if any(not math.isfinite(value) for value in numbers):
        raise ValueError(f"{name} must be finite numbers, got {list(values)}")
    return numbers


def t_quantile(probability: float, degrees: int) -> float:
    """Quantile of Student's t distribution with ``degrees`` degrees of freedom."""
    from scipy.stats import t

    if degrees < 1:
        raise ValueError(f"degrees must be >= 1, got {degrees}")
    return float(t.ppf(probability, degrees))


def summary(values: Sequence[float]) -> Summary:
    """Mean, std (ddof = 1) and 95% t-interval of ``values``; spread and interval None below 2 values."""
    numbers = _finite(values, "values")
    n = len(numbers)
    if n == 0:
        return Summary(None, None, None, None, 0)
    mean = math.fsum(numbers) / n
    if n < 2:
        return Summary(mean, None, None, None, n)
    std = math.sqrt(math.fsum((value - mean) ** 2 for value in numbers) / (n - 1))
    half = t_quantile(0.975, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, mean - half, mean + half, n)


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds, same order)."""
    if len(a) != len(b):
        raise ValueError(f"a and b must pair up (same seeds), got {len(a)} and {len(b)} values")
    first, second = _finite(a, "a"), _finite(b, "b")
    differences = [x - y for x, y in zip(first, second)]
    difference = summary(differences)
    if difference.n < 2:
        return PairedTest(difference.n, difference, None, f"needs >= 2 seeds with both figures, got {difference.n}")
    if difference.std == 0:
        return PairedTest(difference.n, difference, None,
                          f"every paired difference equals {differences[0]:g}: zero variance, t-test undefined")
    from scipy.stats import ttest_rel

    return PairedTest(difference.n, difference, float(ttest_rel(first, second).pvalue), None)


def format_summary(value: Summary, digits: int = 3, interval: bool = True) -> str:
    """``mean ± std [low, high]`` (just the mean for one value, ``n/a`` for none)."""
    if value.mean is None:
        return "n/a"
    text = f"{value.mean:.{digits}f}"
    if value.std is None:
        return text
    text += f" ± {value.std:.{digits}f}"
    return text + (f" [{value.low:.{digits}f}, {value.high:.{digits}f}]" if interval else "")
