"""Rank correlations (Spearman's rho, Kendall's tau-b) in numpy.

Used wherever merino-edge asks whether one ordering agrees with another: the
latency model's predictions vs measured latency (`profile validate`) and the
training-free proxies vs trained quality (`study proxy`).  numpy only, so the
board's profiler needs neither scipy nor torch; the tests check both against scipy.
"""

from __future__ import annotations

import math

import numpy as np


def rankdata(x) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (nan when either side is constant)."""
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom else math.nan


def kendall_tau(x, y) -> float:
    """Kendall's tau-b (nan when either side is constant)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float((sx * sy).sum() / denom) if denom else math.nan


def bootstrap_interval(statistic, x, y, *, samples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(x, y)`, resampling the (x, y) pairs.

    Resamples on which the statistic is undefined (nan: one side constant) are left out.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(x), size=(samples, len(x)))
    values = np.array([statistic(x[p], y[p]) for p in picks])
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
