"""The proxy study report's JSON round trip and tables."""

from __future__ import annotations

import pytest

from merino_edge.errors import IncompatibleError
from merino_edge.training.study_report import Correlation, Sensitivity, StudyReport


def test_report_round_trips_and_tabulates_the_sensitivity_grid():
    report = StudyReport(
        archs=24, budget="FLOPs <= 110G (S=1024)", tokens_per_arch=50_000_000,
        correlations=[Correlation("entropy", 0.81, 0.62, (0.55, 0.93), (0.41, 0.8), "a003", 2), Correlation("params", 0.5, 0.4, (0.1, 0.8), (0.05, 0.6), "a001", 5)],
        sensitivity=[Sensitivity(1e-3, 0.6, 0.0625, 0.81, 0.62), Sensitivity(1e-3, 1.0, 0.0625, 0.7, 0.5), Sensitivity(1e-3, 0.6, 0.0, 0.6, 0.45)],
        sampled=30, bootstrap_samples=2000,
        models=[{"id": "a000", "arch": "E64xR1xL1", "proxies": {"params": 1.5e6, "flops": 3e9, "entropy": 1234.4}, "val_loss": 5.0, "tokens": 4096, "elapsed_s": 61.0, "tokens_per_s": 70.0}],
    )  # fmt: skip
    assert StudyReport.from_json(report.to_json()) == report
    table = report.tables()
    assert table.startswith("24 of 30 sampled architectures")
    assert "| entropy | 0.810 [0.55, 0.93] | 0.620 [0.41, 0.80] | 2 of 24 (a003) | Eq. 15" in table
    assert "| a000 | E64xR1xL1 | 1.500M | 3.00G | 1234 | 5.0000 | 1 | 4,096 | 61 | 70 |" in table
    assert "| 0.001 | 0.810 / 0.620 | 0.700 / 0.500 |" in table
    assert "beta = 0 " in table and "| 0.001 | 0.600 / 0.450 | - |" in table
    with pytest.raises(IncompatibleError, match="schema_version"):
        StudyReport.from_json({**report.to_json(), "schema_version": 99})
