"""Rank correlations of the proxy study against scipy, and the report's JSON round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from merino_edge.errors import InputError
from merino_edge.training.study_report import Correlation, Sensitivity, StudyReport, kendall_tau, rankdata, spearman


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


def test_report_round_trips_and_tabulates_the_sensitivity_grid():
    report = StudyReport(
        archs=24, budget="FLOPs <= 110G (S=1024)", tokens_per_arch=50_000_000,
        correlations=[Correlation("entropy", 0.81, 0.62), Correlation("params", 0.5, 0.4)],
        sensitivity=[Sensitivity(1e-3, 0.6, 0.0625, 0.81, 0.62), Sensitivity(1e-3, 1.0, 0.0625, 0.7, 0.5), Sensitivity(1e-3, 0.6, 0.0, 0.6, 0.45)],
    )  # fmt: skip
    assert StudyReport.from_json(report.to_json()) == report
    table = report.tables()
    assert "| entropy | 0.810 | 0.620 |" in table
    assert "| 0.001 | 0.810 / 0.620 | 0.700 / 0.500 |" in table
    assert "beta = 0 " in table and "| 0.001 | 0.600 / 0.450 | - |" in table
    with pytest.raises(InputError, match="schema_version"):
        StudyReport.from_json({**report.to_json(), "schema_version": 99})
