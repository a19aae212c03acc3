"""The proxy study report's JSON round trip and tables."""

from __future__ import annotations

import pytest

from merino_edge.errors import IncompatibleError
from merino_edge.training.study_report import Correlation, Sensitivity, StudyReport


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
    with pytest.raises(IncompatibleError, match="schema_version"):
        StudyReport.from_json({**report.to_json(), "schema_version": 99})
