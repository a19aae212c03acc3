"""Spearman and Kendall against scipy, with and without ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.stats import spearmanr

from merino_edge.rank_correlation import bootstrap_interval, kendall_tau, rankdata, spearman


@pytest.mark.parametrize("seed", range(5))
def test_spearman_and_kendall_agree_with_scipy_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=30)
    y = x + rng.normal(scale=1.0, size=30)
    if seed % 2:  # ties on both sides
        x, y = np.round(x), np.round(y * 2) / 2
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert np.array_equal(rankdata(x), stats.rankdata(x))


def test_perfect_and_reversed_orders_and_constant_inputs():
    x = np.arange(10.0)
    assert spearman(x, x**3) == pytest.approx(1.0) and kendall_tau(x, x**3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0) and kendall_tau(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, np.ones(10))) and math.isnan(kendall_tau(np.ones(10), x))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40), rng.normal(size=40)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    rng = np.random.default_rng(7)
    x = rng.normal(size=24)
    y = x + rng.normal(scale=1.5, size=24)
    for statistic in (spearman, kendall_tau):
        low, high = bootstrap_interval(statistic, x, y, samples=4000, seed=1)
        theirs = stats.bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=4000, method="percentile", rng=np.random.default_rng(2))
        assert low < statistic(x, y) < high
        assert low == pytest.approx(theirs.confidence_interval.low, abs=0.05)
        assert high == pytest.approx(theirs.confidence_interval.high, abs=0.05)
    assert bootstrap_interval(spearman, x, 2 * x) == (1.0, 1.0)
    assert all(math.isnan(v) for v in bootstrap_interval(spearman, np.ones(5), x[:5]))
