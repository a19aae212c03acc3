"""Sweep one budget and chart the best objective against it (CSV + PNG).

`--pareto flops=60G:160G:11` solves the program exactly at 11 evenly spaced
FLOPs limits (the other budgets held), writes `pareto.csv` and `pareto.png`
(objective vs budget, the searched architecture marked).
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merino_edge.errors import InputError
from merino_edge.search.budgets import Budget, Costs, metric_functions
from merino_edge.search.exact import solve_exact
from merino_edge.search.space import SearchSpace
from merino_edge.units import parse_bytes, parse_count, parse_ms

_PARSERS = {"params": parse_count, "flops": parse_count, "memory": parse_bytes, "latency_ms": parse_ms}
_ALIASES = {"latency": "latency_ms"}


@dataclass(frozen=True)
class Sweep:
    """Which budget to sweep and where: `metric=start:stop:points`."""

    metric: str
    start: float
    stop: float
    points: int

    @classmethod
    def parse(cls, text: str) -> Sweep:
        what = f"--pareto {text!r}"
        name, sep, span = str(text).partition("=")
        metric = _ALIASES.get(name.strip(), name.strip())
        if not sep or metric not in _PARSERS:
            raise InputError(f"{what}: expected METRIC=START:STOP:POINTS with METRIC one of params, flops, memory, latency")
        parts = span.split(":")
        if len(parts) != 3:
            raise InputError(f"{what}: expected START:STOP:POINTS after '='")
        start, stop = (_PARSERS[metric](p, "--pareto") for p in parts[:2])
        try:
            points = int(parts[2])
        except ValueError:
            raise InputError(f"{what}: POINTS must be an integer, got {parts[2]!r}") from None
        if points < 2 or not 0 < start < stop:
            raise InputError(f"{what}: need 0 < START < STOP and POINTS >= 2")
        return cls(metric, float(start), float(stop), points)

    def values(self) -> np.ndarray:
        return np.linspace(self.start, self.stop, self.points)


def sweep(sweep: Sweep, space: SearchSpace, objective, budget: Budget, latency=None, *, progress: bool = True) -> list[dict]:
    """The exact optimum at every point of the sweep; rows with objective None where nothing fits."""
    from tqdm import tqdm

    if sweep.metric == "latency_ms" and latency is None:
        raise InputError("--pareto latency=... needs a device profile (--profile)")
    rows = []
    price = metric_functions(budget, latency)
    for value in tqdm(sweep.values(), desc=f"pareto {sweep.metric}", disable=not progress):
        limit = float(value) if sweep.metric == "latency_ms" else int(round(value))
        point = dataclasses.replace(budget, **{sweep.metric: limit})
        row = {"budget": limit, "objective": None, "arch": "", **{k: None for k in price}}
        try:
            best = solve_exact(space, objective, Costs(space, point, latency))
        except InputError:
            rows.append(row)
            continue
        arch = space.to_arch(best.genome)
        row.update(objective=best.objective, arch=arch.short(), **{k: f(arch) for k, f in price.items()})
        rows.append(row)
    return rows


def write_sweep(rows: list[dict], sweep: Sweep, out_dir: str | Path, chosen: tuple[float, float] | None = None) -> tuple[Path, Path]:
    """Write `pareto.csv` and `pareto.png`; `chosen` = (cost, objective) of the searched architecture."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "pareto.csv", out / "pareto.png"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fit = [r for r in rows if r["objective"] is not None]
    scale = 1.0 if sweep.metric == "latency_ms" else 1e9 if sweep.metric == "flops" else 1e6
    unit = {"latency_ms": "ms", "flops": "G", "params": "M", "memory": "MB"}[sweep.metric]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([r["budget"] / scale for r in fit], [r["objective"] for r in fit], "o-", label="exact optimum at the budget")
    if chosen is not None:
        ax.plot([chosen[0] / scale], [chosen[1]], "r*", markersize=16, label="searched architecture")
    ax.set_xlabel(f"{sweep.metric} budget ({unit})")
    ax.set_ylabel("objective (Eq. 15)")
    ax.set_title(f"Max-entropy architecture vs {sweep.metric} budget")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path

