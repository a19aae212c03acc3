"""The evolutionary search at the paper's settings vs the exact optimum.

    python benchmarks/search_bench.py [--seeds 5] [--budgets 60G,110G,160G]

T = 100 000 mutations, M = 512, K = 64, N = 4 blocks of Table 5, FLOPs budgets
60G / 110G / 160G (merino-edge's FLOPs: batch 1, S = 1024, LM head included, so
50.3G of every budget goes to the head).  For every budget: wall time of one
search (median over seeds), the exact solver's time, the EA's objective as a
percentage of the exact optimum (seed 0 and the worst seed), and the same for
Alg. 1 taken literally (duplicates allowed among the survivors).  Prints a
table and writes benchmarks/results/search_bench.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from merino_edge.fileio import write_json_atomic
from merino_edge.host import cpu_model
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.entropy import entropy_source
from merino_edge.search.evolution import evolve
from merino_edge.search.exact import solve_exact
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace
from merino_edge.units import format_count, parse_count

RESULTS = Path(__file__).resolve().parent / "results" / "search_bench.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budgets", default="60G,110G,160G")
    args = parser.parse_args()
    space, objective = SearchSpace(), Objective()
    rows = []
    for text in args.budgets.split(","):
        costs = Costs(space, Budget(flops=parse_count(text, "--budgets")))
        exact = solve_exact(space, objective, costs)
        runs = [evolve(space, objective, costs, seed=s) for s in range(args.seeds)]
        literal = [evolve(space, objective, costs, seed=s, distinct=False) for s in range(args.seeds)]
        arch = space.to_arch(runs[0].genome)
        pct = [100 * r.objective / exact.objective for r in runs]
        lit = [100 * r.objective / exact.objective for r in literal]
        rows.append(
            {
                "flops_budget": costs.limits["flops"],
                "arch": arch.short(),
                "params": arch.params(),
                "flops": arch.flops().total,
                "objective": runs[0].objective,
                "exact_objective": exact.objective,
                "exact_arch": space.to_arch(exact.genome).short(),
                "ea_seconds_median": statistics.median(r.seconds for r in runs),
                "ea_seconds_max": max(r.seconds for r in runs),
                "exact_seconds": exact.seconds,
                "exact_tuples_solved": exact.solved,
                "ea_percent_seed0": pct[0],
                "ea_percent_min": min(pct),
                "literal_alg1_percent_mean": float(np.mean(lit)),
                "literal_alg1_percent_min": min(lit),
                "accepted_seed0": runs[0].accepted,
                "generations_seed0": runs[0].generations,
            }
        )

    print(f"T=100000 M=512 K=64 N=4, {args.seeds} seeds; entropy: {entropy_source()}")
    print(f"{'budget':>7} {'EA s':>6} {'exact s':>8} {'EA % of exact':>14} {'worst seed':>10} {'literal Alg.1 (mean, min)':>21} {'params':>7} {'FLOPs':>7}  architecture")
    for r in rows:
        print(
            f"{format_count(r['flops_budget']):>7} {r['ea_seconds_median']:>6.2f} {r['exact_seconds']:>8.2f} {r['ea_percent_seed0']:>13.4f}% {r['ea_percent_min']:>9.4f}%"
            f" {r['literal_alg1_percent_mean']:>6.2f}% (min {r['literal_alg1_percent_min']:.1f})"
            f" {format_count(r['params']):>7} {format_count(r['flops']):>7}  {r['arch']}"
        )
    machine = {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(), "numpy": np.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, {"machine": machine, "entropy": entropy_source(), "seeds": args.seeds, "rows": rows}, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
