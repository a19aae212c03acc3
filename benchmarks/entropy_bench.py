"""How well the entropy table and the closed form match Monte-Carlo SVD, and what one evaluation costs.

    python benchmarks/entropy_bench.py [--reference PATH] [--samples 64] [--plain-max 256]

Over every matrix shape of Table 5 (63 distinct (a, b)), against an independent
Monte-Carlo reference (seed 1, >= 64 samples per shape, built here or read from
`--reference`, a table written by `merino-edge search build-table --seed 1 --out PATH`):
mean and max relative error of the shipped table (seed 0) and of the
Marchenko-Pastur closed form.  Both Monte-Carlo runs use the exact log-det
control variate; as a check on that, plain SVD sampling (no control variate,
np.linalg.svd) is compared too on the shapes with a <= `--plain-max`.
Then the cost of one architecture evaluation: Eq. 15 through the Python
objective, and per genome in the vectorised EA (objective + FLOPs feasibility).
Prints a table and writes benchmarks/results/entropy_bench.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from merino_edge.fileio import write_json_atomic
from merino_edge.search.budgets import Budget, Costs
from merino_edge.search.entropy import EntropyTable, build_table, entropy_closed_form, entropy_mc, search_shapes, shipped_table
from merino_edge.search.evolution import score_table, scores
from merino_edge.search.objective import Objective
from merino_edge.search.space import SearchSpace

RESULTS = Path(__file__).resolve().parent / "results" / "entropy_bench.json"


def stats(errors: list[float]) -> dict:
    e = np.abs(np.asarray(errors))
    return {"mean_percent": float(100 * e.mean()), "max_percent": float(100 * e.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", help="a table JSON built with another seed (else built here)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--plain-max", type=int, default=256, help="plain-SVD check on shapes with min dim up to this")
    args = parser.parse_args()

    table = shipped_table()
    if table is None:
        raise SystemExit("no shipped table: run merino-edge search build-table first")
    shapes = search_shapes()
    reference = EntropyTable.load(args.reference) if args.reference else build_table(shapes, samples=args.samples, seed=1)
    if reference.seed == table.seed or reference.samples < 64:
        raise SystemExit("the reference must be an independent run (another seed) with >= 64 samples per shape")

    table_err, closed_err, z = [], [], []
    for shape in shapes:
        ref, ref_se = reference.entries[shape]
        mean, se = table.entries[shape]
        table_err.append((mean - ref) / ref)
        closed_err.append((entropy_closed_form(*shape) - ref) / ref)
        z.append((mean - ref) / max(np.hypot(se, ref_se), 1e-300))
    worst_closed = shapes[int(np.argmax(np.abs(closed_err)))]

    plain_err, plain_z = [], []
    for shape in [s for s in shapes if s[0] <= args.plain_max]:
        mean, se = entropy_mc(*shape, samples=args.samples, seed=2, control_variate=False, solver="svd")
        plain_err.append((table.entries[shape][0] - mean) / mean)
        plain_z.append((table.entries[shape][0] - mean) / se)

    space, objective = SearchSpace(), Objective()
    genomes = space.sample(np.random.default_rng(0), 2000)
    archs = [space.to_arch(g) for g in genomes[:200]]
    t = time.perf_counter()
    for arch in archs:
        objective(arch)
    per_arch_us = 1e6 * (time.perf_counter() - t) / len(archs)
    costs = Costs(space, Budget(flops=110 * 10**9))
    table5 = score_table(space, objective)
    many = space.sample(np.random.default_rng(1), 100_000)
    t = time.perf_counter()
    scores(table5, many)
    costs.feasible(many)
    per_genome_ns = 1e9 * (time.perf_counter() - t) / len(many)

    result = {
        "shapes": len(shapes),
        "table": {"samples": table.samples, "seed": table.seed, "eps": table.eps, **stats(table_err)},
        "reference": {"samples": reference.samples, "seed": reference.seed},
        "table_z_abs_max": float(np.max(np.abs(z))),
        "closed_form": {**stats(closed_err), "worst_shape": list(worst_closed)},
        "plain_svd_check": {"shapes": len(plain_err), "samples": args.samples, **stats(plain_err), "z_abs_max": float(np.max(np.abs(plain_z)))},
        "objective_python_us_per_arch": per_arch_us,
        "ea_ns_per_genome": per_genome_ns,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "numpy": np.__version__},
    }
    print(f"{len(shapes)} shapes of Table 5, eps {table.eps:g}; reference: Monte-Carlo, {reference.samples} samples/shape, seed {reference.seed}")
    print(f"{'vs reference':<40} {'mean rel. err':>14} {'max rel. err':>13}")
    print(f"{'table (' + str(table.samples) + ' samples, seed ' + str(table.seed) + ')':<40} {result['table']['mean_percent']:>13.5f}% {result['table']['max_percent']:>12.5f}%")
    print(f"{'closed form (Marchenko-Pastur)':<40} {result['closed_form']['mean_percent']:>13.5f}% {result['closed_form']['max_percent']:>12.5f}%   worst at {worst_closed}")
    p = result["plain_svd_check"]
    print(f"{'table vs plain SVD (' + str(p['shapes']) + ' shapes, a<=' + str(args.plain_max) + ')':<40} {p['mean_percent']:>13.5f}% {p['max_percent']:>12.5f}%   max |z| {p['z_abs_max']:.2f}")
    print(f"table vs reference: max |z| {result['table_z_abs_max']:.2f} (difference over the combined standard error)")
    print(f"one architecture: {per_arch_us:.1f} us through Objective (Python); {per_genome_ns:.0f} ns per genome in the EA (objective + FLOPs check)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result, indent=1)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
