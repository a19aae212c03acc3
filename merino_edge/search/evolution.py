"""The evolutionary algorithm of the paper (Alg. 1), vectorised over the population.

How Alg. 1 is read here:
- T (`iterations`) counts candidate mutations, i.e. runs of the inner loop's
  body, feasible or not.
- The population starts with up to M architectures that meet every budget:
  the smallest (first width, ratio and depth of every block) and random draws
  from the space (at most `init_draws`; neither is counted in T).
- Each generation refills the population to M: every missing member is a
  MUTATE (Alg. 2) of a parent picked uniformly from the current population;
  a mutant over any budget is discarded (the slot is refilled in the next
  round).  All mutants of one round are drawn and priced at once with numpy.
- Once the population is full, the M - K members with the lowest objective
  are removed (ties keep the earlier member).  With `distinct` (the default)
  a genome that is already in the population counts once, so the K survivors
  are K different architectures.  Taken literally, Alg. 1 lets copies of one
  good architecture fill the population, and the search then stalls in local
  optima: over seeds 0-9 at FLOPs budgets 60/80/110/160/200G it missed the
  exact optimum in 12 of 50 runs (worst 94.1 % of it, at 80G), while with
  `distinct` all 50 runs reached it (benchmarks/search_bench.py reports both).
- After T mutations the best member is returned.

Deterministic for a given seed: one numpy Generator drives every draw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from merino_edge.errors import InputError
from merino_edge.search.budgets import Costs
from merino_edge.search.space import DEPTH, RATIO, WIDTH, SearchSpace

# Sec. 4.1: T mutations, a population of M, the K best kept as parents.
ITERATIONS, POPULATION, PARENTS = 100_000, 512, 64


@dataclass(frozen=True)
class EvolutionResult:
    genome: np.ndarray
    objective: float
    mutations: int  # candidates drawn (T)
    accepted: int  # candidates within every budget
    generations: int
    seconds: float
    best_per_generation: tuple[float, ...]


def score_table(space: SearchSpace, objective) -> np.ndarray:
    """Objective of one block for every (width, ratio, depth) index, shape `space.shape`."""
    a = space.axes
    w, r, d = space.shape
    return np.array([objective.block_score(a.widths[i], a.ratios[k], a.depths[m]) for i in range(w) for k in range(r) for m in range(d)]).reshape(w, r, d)


def scores(table: np.ndarray, genomes: np.ndarray) -> np.ndarray:
    g = np.asarray(genomes)
    return table[g[..., WIDTH], g[..., RATIO], g[..., DEPTH]].sum(axis=-1)


def evolve(
    space: SearchSpace,
    objective,
    costs: Costs,
    *,
    iterations: int = ITERATIONS,
    population: int = POPULATION,
    parents: int = PARENTS,
    seed: int = 0,
    step: int = 2,
    init_draws: int = 100_000,
    distinct: bool = True,
) -> EvolutionResult:
    """Run Alg. 1; InputError if no random architecture meets the budgets."""
    if not 1 <= parents < population:
        raise InputError(f"evolution: need 1 <= parents < population, got parents={parents}, population={population}")
    if iterations < 1:
        raise InputError(f"evolution: iterations must be >= 1, got {iterations}")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    table = score_table(space, objective)

    pool = [np.zeros((1, space.blocks, 3), dtype=np.int64)]  # the smallest choice everywhere, then random draws
    pool[0] = pool[0][costs.feasible(pool[0])]
    drawn = 0
    while drawn < init_draws and sum(len(p) for p in pool) < population:
        batch = space.sample(rng, min(max(population, 4096), init_draws - drawn))
        drawn += len(batch)
        pool.append(batch[costs.feasible(batch)])
    genomes = np.concatenate(pool)[:population]
    if not len(genomes):
        raise InputError(f"no architecture met the budgets ({costs.budget.describe()}) among {drawn} random draws from the space")
    fitness = scores(table, genomes)

    mutations = accepted = generations = 0
    best = []
    while mutations < iterations:
        if len(genomes) >= population:
            order = np.argsort(-fitness, kind="stable")
            if distinct:
                rows = np.ascontiguousarray(genomes[order].reshape(len(order), -1).astype(np.int8))
                _, first = np.unique(rows.view(f"V{rows.shape[1]}").ravel(), return_index=True)
                order = order[np.sort(first)]
            survivors = order[:parents]
            genomes, fitness = genomes[survivors], fitness[survivors]
            generations += 1
            best.append(float(fitness[0]))
        need = min(population - len(genomes), iterations - mutations)
        children = space.mutate(genomes[rng.integers(len(genomes), size=need)], rng, step)
        mutations += need
        keep = costs.feasible(children)
        accepted += int(keep.sum())
        genomes = np.concatenate([genomes, children[keep]])
        fitness = np.concatenate([fitness, scores(table, children[keep])])
    top = int(np.argmax(fitness))
    return EvolutionResult(genomes[top], float(fitness[top]), mutations, accepted, generations, time.perf_counter() - start, tuple(best))
