"""Confidence intervals for a few seeds: Student t for a mean, Welch for a difference of two means.

Student's t quantile is computed here (regularised incomplete beta by its continued fraction, then bisection) so
the report needs no scipy; tests/test_analysis_stats.py checks it against scipy.stats where scipy is installed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEVEL = 0.95  # two-sided confidence level of every interval in the report


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval around `estimate` (a mean, or a difference of means)."""

    estimate: float
    low: float
    high: float
    df: float  # degrees of freedom of the t distribution used (Welch: not an integer)
    level: float = LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes' betacf)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily whole) degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(p: float, df: float) -> float:
    """The t value below which a fraction `p` of Student's t distribution lies (inverse of `t_cdf`)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df > 0, but got p={p}, df={df}")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):  # bisection: the cdf is monotone, 200 halvings reach double precision
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-13 * max(1.0, high):
            break
    return (low + high) / 2.0


def _mean_var(values: Sequence[float]) -> tuple[int, float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else math.nan
    return n, mean, var


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Student t interval of the mean of `values` (one per seed); None with fewer than two values."""
    n, mean, var = _mean_var(values)
    if n < 2:
        return None
    half = t_ppf(0.5 + level / 2.0, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, float(n - 1), level)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval | None:
    """Welch's interval of mean(a) - mean(b) (unequal variances); None unless each side has two values or more.

    Two sides without any spread (every seed gave the same value) give a zero-width interval at the difference.
    """
    na, mean_a, var_a = _mean_var(a)
    nb, mean_b, var_b = _mean_var(b)
    if na < 2 or nb < 2:
        return None
    diff = mean_a - mean_b
    se2_a, se2_b = var_a / na, var_b / nb
    se2 = se2_a + se2_b
    if se2 == 0.0:
        return Interval(diff, diff, diff, float(na + nb - 2), level)
    df = se2**2 / (se2_a**2 / (na - 1) + se2_b**2 / (nb - 1))
    half = t_ppf(0.5 + level / 2.0, df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, df, level)
