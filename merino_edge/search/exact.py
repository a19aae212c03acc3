"""The exact optimum of Eq. 15 under the budgets, to measure the EA's gap.

Once the widths are fixed every cost is additive over blocks (`budgets.Costs`)
and so is the objective, so the program is, per width tuple, a small
multi-dimensional knapsack with one choice of (R, L) per block.  The solver:

1. for every non-decreasing width tuple (495 for Table 5 and N = 4), an upper
   bound: each block takes its best (R, L) that still fits when every other
   block takes its cheapest, per metric;
2. visits the tuples from the highest bound down and stops once the bound is
   no better than the best architecture found;
3. solves a visited tuple exactly by meet in the middle: all (R, L) choices of
   the first half of the blocks against all of the second half (at most
   784 x 784 for N = 4, fewer after dropping the choices that cannot fit beside
   the other half's cheapest), keeping the best pair that meets every budget.

Step 3 grows as (ratios x depths)^N, so this is meant for N <= 5.

A calibrated latency is not additive (its cache share grows with the model's
traffic) but its three terms are: the solver works on those components, checks
the real latency of every candidate pair in step 3, and prunes in steps 1 and 3
with component-wise lower bounds, which bound the latency from below because
it is non-decreasing in each term (`Costs`).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np

from merino_edge.errors import InputError
from merino_edge.search.budgets import Costs
from merino_edge.search.evolution import score_table
from merino_edge.search.space import SearchSpace
from merino_edge.units import format_count

_CHUNK = 1 << 22  # pair evaluations per numpy step in the meet-in-the-middle join


@dataclass(frozen=True)
class ExactResult:
    genome: np.ndarray
    objective: float
    tuples: int  # width tuples in the space
    solved: int  # width tuples solved exactly (the rest were bounded out)
    seconds: float


def _half(options_obj: list[np.ndarray], options_cost: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All combinations of a few blocks' options: (objective, cost (n, k), choice index per block (n, blocks)).

    No blocks is one empty combination of objective and cost 0.
    """
    choice = np.array(list(itertools.product(*[range(len(o)) for o in options_obj])), dtype=np.int64)
    obj = np.zeros(len(choice)) + sum(o[choice[:, j]] for j, o in enumerate(options_obj))
    cost = np.zeros((len(choice), k)) + sum(c[choice[:, j]] for j, c in enumerate(options_cost))
    return obj, cost, choice


def solve_exact(space: SearchSpace, objective, costs: Costs) -> ExactResult:
    """The best architecture within every budget; InputError if none fits."""
    start = time.perf_counter()
    w, r, d = space.shape
    table = score_table(space, objective).reshape(w, r * d)
    k = len(costs.components)
    block = np.stack([costs.block[c].reshape(w, r * d) for c in costs.components], axis=-1) if k else np.zeros((w, r * d, 0))
    fixed = np.stack([costs.fixed[c] for c in costs.components], axis=-1) if k else np.zeros((len(costs.tuples), 0))

    cheapest = block.min(axis=1)  # (w, k): each component at its smallest, a lower bound
    bounds = np.full(len(costs.tuples), -np.inf)
    for t, widths in enumerate(costs.tuples):
        others = cheapest[widths].sum(axis=0) - cheapest[widths]  # (N, k): the other blocks at their cheapest
        fits = costs.within(fixed[t] + block[widths] + others[:, None, :])  # (N, r*d)
        if fits.any(axis=1).all():
            bounds[t] = np.where(fits, table[widths], -np.inf).max(axis=1).sum()
    if not np.isfinite(bounds).any():
        raise InputError(f"no architecture in the search space meets the budgets ({costs.budget.describe()}): {_cheapest(costs, fixed, cheapest)}")

    best_value, best_genome, solved = -np.inf, None, 0
    half = space.blocks // 2
    for t in np.argsort(-bounds, kind="stable"):
        if not bounds[t] > best_value:
            break
        solved += 1
        widths = costs.tuples[t]
        objs = [table[e] for e in widths]
        cols = [block[e] for e in widths]
        lo_obj, lo_cost, lo_choice = _half(objs[:half], cols[:half], k)
        hi_obj, hi_cost, hi_choice = _half(objs[half:], cols[half:], k)
        # Drop the choices that cannot fit even beside the other half's cheapest, or cannot beat the best so far.
        lo = costs.within(fixed[t] + lo_cost + hi_cost.min(axis=0)) & (lo_obj + hi_obj.max() > best_value)
        hi = costs.within(fixed[t] + hi_cost + lo_cost.min(axis=0)) & (hi_obj + lo_obj.max() > best_value)
        lo_obj, lo_cost, lo_choice = lo_obj[lo], lo_cost[lo], lo_choice[lo]
        hi_obj, hi_cost, hi_choice = hi_obj[hi], hi_cost[hi], hi_choice[hi]
        if not (len(lo_obj) and len(hi_obj)):
            continue
        rows = max(1, _CHUNK // len(hi_obj))
        for s in range(0, len(lo_obj), rows):
            fits = costs.within(fixed[t] + lo_cost[s : s + rows, None, :] + hi_cost[None, :, :])
            total = np.where(fits, lo_obj[s : s + rows, None] + hi_obj[None, :], -np.inf)
            i, j = np.unravel_index(int(np.argmax(total)), total.shape)
            if total[i, j] > best_value:
                best_value = float(total[i, j])
                choice = np.concatenate([lo_choice[s + i], hi_choice[j]])
                best_genome = np.stack([widths, choice // d, choice % d], axis=1)
    if best_genome is None:
        raise InputError(f"no architecture in the search space meets the budgets ({costs.budget.describe()}): {_cheapest(costs, fixed, cheapest)}")
    return ExactResult(best_genome, best_value, len(costs.tuples), solved, time.perf_counter() - start)


def _cheapest(costs: Costs, fixed: np.ndarray, cheapest: np.ndarray) -> str:
    """Name the metrics whose cheapest architecture is already over its limit."""
    low = costs.metrics(fixed + cheapest[costs.tuples].sum(axis=1))  # lower bounds, per width tuple
    out = []
    for name, values in low.items():
        if values.min() > costs.limits[name]:
            out.append(f"the smallest needs {name} {format_count(float(values.min()), 4)} > {format_count(costs.limits[name], 4)}")
    return "; ".join(out) or "each budget alone can be met, but not all of them together"
