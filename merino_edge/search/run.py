"""`merino-edge search` as one library call: `run_search(...) -> SearchResult`.

Runs the evolutionary search (Alg. 1) under the budgets, solves the same
program exactly to report the EA's gap, optionally sweeps one budget for a
Pareto chart, and returns everything `arch.json`'s search record holds.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from merino_edge.arch import ArchSpec, save_arch
from merino_edge.errors import InputError
from merino_edge.search.budgets import Budget, Costs, metric_functions
from merino_edge.search.entropy import entropy_source
from merino_edge.search.evolution import ITERATIONS, PARENTS, POPULATION, EvolutionResult, evolve
from merino_edge.search.exact import ExactResult, solve_exact
from merino_edge.search.objective import Objective
from merino_edge.search.pareto import Sweep, sweep, write_sweep
from merino_edge.search.space import SearchSpace
from merino_edge.units import format_count

SCHEMA_VERSION = 1
DEFAULT_FLOPS = 60 * 10**9  # the paper's smallest MeRino target, used when no budget is given
EXACT_MAX_BLOCKS = 5  # the exact solver's work grows as (ratios x depths)^N


@dataclass(frozen=True)
class SearchResult:
    arch: ArchSpec
    objective: Objective
    space: SearchSpace
    budget: Budget
    seed: int
    evolution: EvolutionResult
    exact: ExactResult | None
    latency_ms: float | None  # predicted decode ms/token at budget.latency_context (with a profile)
    profile: str | None
    seconds: float
    pareto_files: tuple[str, ...] = ()

    @property
    def score(self) -> float:
        return self.evolution.objective

    @property
    def gap_percent(self) -> float | None:
        """The EA's objective as a percentage of the exact optimum."""
        return None if self.exact is None else 100.0 * self.evolution.objective / self.exact.objective

    def costs(self) -> dict:
        a, b = self.arch, self.budget
        flops = a.flops(b.flops_seq_len)
        out = {
            "params": a.params(),
            "executed_params": a.executed_params(),
            "flops": flops.total,
            "flops_seq_len": flops.seq_len,
            "flops_head": flops.head,
            "flops_embedding": flops.embedding,
            "flops_blocks": flops.blocks,
            "weight_bytes": a.weight_bytes(b.memory_bytes_per_value),
            "kv_cache_bytes_per_token": a.kv_cache_bytes_per_token(b.memory_bytes_per_value),
            "memory_bytes": a.memory_bytes(b.memory_context, b.memory_bytes_per_value),
            "memory_context": b.memory_context,
        }
        if self.latency_ms is not None:
            out.update(decode_latency_ms=self.latency_ms, latency_context=b.latency_context)
        return out

    def to_json(self) -> dict:
        """The search record stored in arch.json."""
        ev, ex = self.evolution, self.exact
        return {
            "schema_version": SCHEMA_VERSION,
            "objective": {**self.objective.to_json(), "value": self.score, "entropy": entropy_source(self.objective.eps)},
            "terms": [t.to_json() for t in self.objective.breakdown(self.arch)],
            "costs": self.costs(),
            "budget": self.budget.to_json(),
            "profile": self.profile,
            "seed": self.seed,
            "blocks": self.space.blocks,
            "axes": self.space.axes.to_json(),
            "evolution": {"mutations": ev.mutations, "accepted": ev.accepted, "generations": ev.generations, "seconds": ev.seconds},
            "exact": None
            if ex is None
            else {"objective": ex.objective, "arch": self.space.to_arch(ex.genome).short(), "solved_tuples": ex.solved, "seconds": ex.seconds},
            "ea_percent_of_exact": self.gap_percent,
        }

    def table(self) -> str:
        """The readable report `merino-edge search` prints."""
        a, b, o = self.arch, self.budget, self.objective
        flops = a.flops(b.flops_seq_len)
        lines = [
            f"budget: {b.describe()}",
            f"objective: Eq. 15, alpha {o.alpha}, beta {o.beta:g}, eps {o.eps:g}; entropy from the {entropy_source(o.eps)}",
            "",
            f"{'block':>5} {'E':>5} {'R':>4} {'L':>2} {'heads':>5} {'params':>8} {'FLOPs':>8} {'H_MHA':>9} {'g_MHA':>6} {'H_FFN':>9} {'g_FFN':>6} {'score':>9}",
        ]
        for j, (blk, t) in enumerate(zip(a.blocks, o.breakdown(a), strict=True), 1):
            lines.append(
                f"{j:>5} {blk.width:>5} {blk.ratio:>4g} {blk.depth:>2} {blk.heads:>5} {format_count(a.layer_params(blk)):>8} "
                f"{format_count(flops.per_block[j - 1]):>8} {t.entropy_mha:>9.1f} {t.gamma_mha:>6.3f} {t.entropy_ffn:>9.1f} {t.gamma_ffn:>6.3f} {t.score:>9.1f}"
            )
        lines += [
            f"{'total':>5} {'':>28} {format_count(flops.blocks):>8} {'':>33} {self.score:>9.1f}",
            "",
            f"arch: {a.short()}",
            f"params: {format_count(a.params())} unique ({format_count(a.non_embedding_params())} in layers), {format_count(a.executed_params())} executed",
            f"FLOPs (S={flops.seq_len}): {format_count(flops.total)} = LM head {format_count(flops.head)}"
            f" + projections {format_count(flops.embedding)} + blocks {format_count(flops.blocks)}",
            f"memory (fp{8 * b.memory_bytes_per_value}): weights {format_count(a.weight_bytes(b.memory_bytes_per_value))}B"
            f" + KV cache at {b.memory_context} tokens {format_count(b.memory_context * a.kv_cache_bytes_per_token(b.memory_bytes_per_value))}B"
            f" = {format_count(a.memory_bytes(b.memory_context, b.memory_bytes_per_value))}B",
        ]
        if self.latency_ms is not None:
            lines.append(f"predicted decode latency: {self.latency_ms:.3g} ms/token at context {b.latency_context} ({self.profile})")
        ev = self.evolution
        lines.append(
            f"EA: {ev.mutations} mutations ({ev.accepted} within budget), {ev.generations} generations, seed {self.seed}, {ev.seconds:.2f} s"
        )
        if self.exact is not None:
            ex = self.exact
            lines.append(
                f"exact optimum: {ex.objective:.1f} ({self.space.to_arch(ex.genome).short()}), {ex.solved} of {ex.tuples} width tuples solved, {ex.seconds:.2f} s;"
                f" EA reaches {self.gap_percent:.4f} %"
            )
        for path in self.pareto_files:
            lines.append(f"pareto: {path}")
        return "\n".join(lines)

    def save(self, path: str | Path = "arch.json") -> Path:
        save_arch(path, self.arch, self.to_json())
        return Path(path)


def run_search(
    budget: Budget | None = None,
    *,
    space: SearchSpace | None = None,
    objective: Objective | None = None,
    profile: str | Path | None = None,
    iterations: int = ITERATIONS,
    population: int = POPULATION,
    parents: int = PARENTS,
    seed: int = 0,
    exact: bool | None = None,
    pareto: str | Sweep | None = None,
    pareto_out: str | Path = "pareto",
    progress: bool = True,
) -> SearchResult:
    """Search the max-entropy architecture within `budget` (default: FLOPs <= 60G).

    `exact=None` runs the exact solver when the space has at most 5 blocks.
    """
    start = time.perf_counter()
    budget = budget or Budget()
    if not budget.limits():
        budget = dataclasses.replace(budget, flops=DEFAULT_FLOPS)
    space = space or SearchSpace()
    objective = objective or Objective()
    if budget.latency_ms is not None and profile is None:
        raise InputError("--latency-ms needs a device profile: pass --profile profile.json (written by merino-edge profile)")
    latency = None
    if profile is not None:
        from merino_edge.search.latency import LatencyModel

        latency = LatencyModel.from_file(profile, axes=space.axes)
        if budget.latency_ms is not None and budget.latency_margin is None:
            # Room for the latency model's own error: the decode MAPE of its calibration fit.
            fit = latency.profile.calibration
            budget = dataclasses.replace(budget, latency_margin=round(fit.decode_mape / 100, 4) if fit else 0.0)
    sweep_spec = Sweep.parse(pareto) if isinstance(pareto, str) else pareto

    costs = Costs(space, budget, latency)
    best = None
    if exact if exact is not None else space.blocks <= EXACT_MAX_BLOCKS:
        best = solve_exact(space, objective, costs)  # also the clear error when nothing fits
    ev = evolve(space, objective, costs, iterations=iterations, population=population, parents=parents, seed=seed)
    arch = space.to_arch(ev.genome)
    predicted = None if latency is None else latency.decode_ms(arch, budget.latency_context)

    files: tuple[str, ...] = ()
    if sweep_spec is not None:
        rows = sweep(sweep_spec, space, objective, budget, latency, progress=progress)
        if all(r["objective"] is None for r in rows):
            raise InputError(f"--pareto {sweep_spec.metric}: no architecture fits any budget of the sweep")
        chosen = (metric_functions(budget, latency)[sweep_spec.metric](arch), ev.objective)
        files = tuple(str(p) for p in write_sweep(rows, sweep_spec, pareto_out, chosen))
    return SearchResult(
        arch=arch,
        objective=objective,
        space=space,
        budget=budget,
        seed=seed,
        evolution=ev,
        exact=best,
        latency_ms=predicted,
        profile=None if profile is None else str(profile),
        seconds=time.perf_counter() - start,
        pareto_files=files,
    )
