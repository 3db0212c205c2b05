"""The interval math of the verdicts against scipy.stats (the reference), and against textbook t quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import stats

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy comes with the `samplers` extra (make setup)")


@pytest.mark.parametrize("df", [1, 1.5, 2, 2.7, 3, 4, 7.3, 10, 30, 120, 1e4])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.95, 0.975, 0.995, 0.9995, 0.025])
def test_t_quantile_and_cdf_match_scipy(df, p):
    assert stats.t_ppf(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
    x = scipy_stats.t.ppf(p, df)
    assert stats.t_cdf(x, df) == pytest.approx(p, abs=1e-11)


def test_textbook_two_sided_95_quantiles():
    # the t table every statistics book prints: df 1, 2, 4, 9, 29
    for df, t in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert stats.t_ppf(0.975, df) == pytest.approx(t, abs=5e-4)


@pytest.mark.parametrize("values", [[0.91, 0.92, 0.905], [1.0, 3.0], [12.1, 11.8, 12.6, 12.0, 11.9]])
def test_mean_interval_matches_scipy(values):
    interval = stats.mean_interval(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-9)
    assert interval.estimate == pytest.approx(np.mean(values)) and interval.df == len(values) - 1


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0.91, 0.92, 0.905], [0.93, 0.925, 0.94, 0.92]),  # unequal sizes
        ([0.80, 0.86, 0.83], [0.851, 0.852, 0.853]),  # very unequal spreads: Welch's df far from n_a + n_b - 2
        ([11.5, 11.9], [12.4, 12.2, 12.9, 12.5, 12.3]),
    ],
)
def test_welch_interval_matches_scipy(a, b):
    interval = stats.welch_interval(a, b)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = reference.confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert interval.df == pytest.approx(reference.df, rel=1e-12)
    assert interval.estimate == pytest.approx(np.mean(a) - np.mean(b))


def test_no_interval_from_a_single_run_and_none_wider_than_the_data_without_spread():
    assert stats.mean_interval([0.9]) is None
    assert stats.welch_interval([0.9], [0.8, 0.85]) is None
    flat = stats.welch_interval([0.9, 0.9, 0.9], [0.8, 0.8])
    assert (flat.low, flat.high) == pytest.approx((0.1, 0.1))


def test_t_quantile_refuses_impossible_arguments():
    with pytest.raises(ValueError, match=r"0 < p < 1 and df > 0, but got p=1\.0, df=3"):
        stats.t_ppf(1.0, 3)
