"""The evolutionary search at the paper's settings vs the exact optimum, and the model sizes against Table 2.

    python benchmarks/search_bench.py [--seeds 5] [--budgets 60G,110G,160G]

T = 100 000 mutations, M = 512, K = 64, N = 4 blocks of Table 5, FLOPs budgets
60G / 110G / 160G (the default "full" FLOPs: batch 1, S = 1024, 2 x MACs, LM
head included, so 50.3G of every budget goes to the head at vocabulary 32,000).
For every budget: wall time of one search (median over seeds), the exact
solver's time, the EA's objective as a percentage of the exact optimum (seed 0
and the worst seed), and the same for Alg. 1 taken literally (duplicates
allowed among the survivors).

A second table searches every budget twice: at the defaults (vocabulary 32,000,
full FLOPs) and at the paper's settings (`search --preset paper`: vocabulary
50,272, 1 FLOP per MAC, no LM head); it prints each pick's params and FLOPs in
both conventions beside Table 2's MeRino of that budget.  Prints both tables and
writes benchmarks/results/search_bench.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import numpy as np

from merino_edge.arch import Axes
from merino_edge.fileio import write_json_atomic
from merino_edge.host import cpu_model
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.entropy import entropy_source
from merino_edge.search.evolution import evolve
from merino_edge.search.exact import solve_exact
from merino_edge.search.objective import Objective
from merino_edge.search.presets import PRESETS
from merino_edge.search.run import run_search
from merino_edge.search.space import SearchSpace
from merino_edge.units import format_count, parse_count

RESULTS = Path(__file__).resolve().parent / "results" / "search_bench.json"
# Table 2 of the paper: MeRino's params at each FLOPs target.
TABLE2_PARAMS = {60 * 10**9: 52 * 10**6, 110 * 10**9: 61 * 10**6, 160 * 10**9: 64 * 10**6}


def sizes(budgets: list[int]) -> list[dict]:
    """Each budget searched at the default settings and at the paper's, in either FLOPs convention."""
    paper = PRESETS["paper"]
    axes = Axes(paper["widths"], paper["ratios"], paper["depths"])
    paper_space = SearchSpace(axes, paper["blocks"], vocab_size=paper["vocab_size"], proj_dim=paper["proj_dim"], max_positions=paper["max_positions"])
    settings = [("default", SearchSpace(), "full"), ("paper preset", paper_space, paper["flops_convention"])]
    rows = []
    for flops in budgets:
        for name, space, convention in settings:
            result = run_search(Budget(flops=flops, flops_convention=convention), space=space, objective=Objective(paper["alpha"], paper["beta"]), progress=False)
            count = result.arch.flops()
            rows.append(
                {
                    "flops_budget": flops,
                    "settings": name,
                    "vocab_size": space.vocab_size,
                    "flops_convention": convention,
                    "arch": result.arch.short(),
                    "params": result.arch.params(),
                    "flops_full": count.count("full"),
                    "flops_paper": count.count("paper"),
                    "table2_params": TABLE2_PARAMS.get(flops),
                }
            )
    return rows


def print_sizes(rows: list[dict]) -> None:
    print("\nmodel sizes against Table 2 (FLOPs at batch 1, S = 1024; full = 2 x MACs with LM head, paper = MACs without it)")
    print(f"{'budget':>7} {'settings':<13} {'vocab':>6} {'counted':>7} {'params':>7} {'FLOPs full':>10} {'FLOPs paper':>11} {'Table 2':>12}  architecture")
    for r in rows:
        table2 = f"{format_count(r['table2_params'])} {format_count(r['flops_budget'])}" if r["table2_params"] else "-"
        print(
            f"{format_count(r['flops_budget']):>7} {r['settings']:<13} {r['vocab_size']:>6} {r['flops_convention']:>7} {format_count(r['params']):>7}"
            f" {format_count(r['flops_full']):>10} {format_count(r['flops_paper']):>11} {table2:>12}  {r['arch']}"
        )


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
    size_rows = sizes([row["flops_budget"] for row in rows])
    print_sizes(size_rows)
    machine = {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(), "numpy": np.__version__}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, {"machine": machine, "entropy": entropy_source(), "seeds": args.seeds, "rows": rows, "sizes": size_rows}, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
