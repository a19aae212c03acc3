"""Budgets and the costs they bound: params, FLOPs, memory and predicted latency.

Every cost of an architecture (and each term of a calibrated latency) is additive over its parts:

    cost(arch) = fixed(widths) + sum_j block_cost(E_j, R_j, L_j)

where `fixed` (embeddings, projections between the widths, final norm, LM head,
call overhead) depends only on the tuple of widths.  `Costs` tabulates both
halves for a search space so that the evolutionary and the exact solver can
price whole populations with numpy indexing.  The tables are made by asking
the cost model itself (`ArchSpec` and the `LatencyModel`) about small archs,
so a tabulated cost always equals the cost model's answer for the full arch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np

from merino_edge.arch import FLOPS_SEQ_LEN, ArchSpec, Block
from merino_edge.errors import InputError
from merino_edge.fileio import check_schema
from merino_edge.search.space import DEPTH, RATIO, WIDTH, SearchSpace
from merino_edge.units import format_count

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Budget:
    """Upper bounds an architecture must meet; None means unbounded."""

    params: int | None = None  # unique parameters
    flops: int | None = None  # forward FLOPs at batch 1 over `flops_seq_len` tokens
    memory: int | None = None  # bytes: weights + KV cache at `memory_context` tokens
    latency_ms: float | None = None  # predicted decode ms per token at `latency_context`
    flops_seq_len: int = FLOPS_SEQ_LEN
    memory_context: int = 2048
    memory_bytes_per_value: int = 2  # fp16 weights and cache, as on the board
    latency_context: int = 512
    latency_margin: float | None = None  # search under latency_ms * (1 - margin); None: the profile's fit error (`run_search`)

    def __post_init__(self) -> None:
        for name in ("params", "flops", "memory", "latency_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InputError(f"budget {name}: must be a positive number, got {value!r}")
        for name in ("flops_seq_len", "memory_bytes_per_value"):
            if getattr(self, name) < 1:
                raise InputError(f"budget {name}: must be >= 1, got {getattr(self, name)!r}")
        for name in ("memory_context", "latency_context"):
            if getattr(self, name) < 0:
                raise InputError(f"budget {name}: must be >= 0, got {getattr(self, name)!r}")
        if self.latency_margin is not None and not 0 <= self.latency_margin < 1:
            raise InputError(f"budget latency_margin: must be in [0, 1), got {self.latency_margin!r}")

    def limits(self) -> dict[str, float]:
        """The bounded metrics and their limits, in a fixed order (the latency less its margin)."""
        out = {k: getattr(self, k) for k in ("params", "flops", "memory", "latency_ms") if getattr(self, k) is not None}
        if "latency_ms" in out:
            out["latency_ms"] *= 1 - (self.latency_margin or 0.0)
        return out

    def describe(self) -> str:
        parts = []
        if self.params is not None:
            parts.append(f"params <= {format_count(self.params)}")
        if self.flops is not None:
            parts.append(f"FLOPs <= {format_count(self.flops)} (S={self.flops_seq_len})")
        if self.memory is not None:
            parts.append(f"memory <= {format_count(self.memory)}B (weights + KV at {self.memory_context} tokens)")
        if self.latency_ms is not None:
            margin = f", searched {100 * self.latency_margin:.3g} % below it" if self.latency_margin else ""
            parts.append(f"decode latency <= {self.latency_ms:g} ms (context {self.latency_context}{margin})")
        return ", ".join(parts) or "unbounded"

    def to_json(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_json(cls, data: dict) -> Budget:
        check_schema(data, "budget", SCHEMA_VERSION)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def metric_functions(budget: Budget, latency=None) -> dict[str, Callable[[ArchSpec], float]]:
    """How each bounded metric prices a whole architecture (the cost model's own answer)."""
    out = {
        "params": lambda a: a.params(),
        "flops": lambda a: a.flops(budget.flops_seq_len).total,
        "memory": lambda a: a.memory_bytes(budget.memory_context, budget.memory_bytes_per_value),
    }
    if latency is not None:
        out["latency_ms"] = lambda a: latency.decode_ms(a, budget.latency_context)
    return out


# A calibrated latency model is warm + mu(traffic) * penalty (`search.latency`): the three
# terms are additive and tabulated; the latency itself is combined from them.
WARM, PENALTY, TRAFFIC = "latency.warm", "latency.penalty", "latency.traffic"


class Costs:
    """The budget's metrics tabulated over a search space.

    `block[k]` has shape (widths, ratios, depths): component k of one block;
    `fixed[k]` has one value per row of `space.width_tuples()`.  The components
    are the bounded metrics themselves, except a calibrated latency, which is
    not additive: its three additive terms are tabulated instead and combined
    by `metrics`.  Every metric is non-decreasing in every component, so
    component-wise lower bounds give lower bounds of the metrics (the exact
    solver's pruning relies on it).
    """

    def __init__(self, space: SearchSpace, budget: Budget, latency=None):
        if budget.latency_ms is not None and latency is None:
            raise InputError("a latency budget needs a device profile (--profile)")
        self.space, self.budget = space, budget
        self.limits = budget.limits()
        functions = metric_functions(budget, latency)
        self.names = list(self.limits)
        self.latency = latency if "latency_ms" in self.limits and latency.cache_aware else None
        self.components = list(self.names)
        if self.latency is not None:
            context = budget.latency_context
            self.components.remove("latency_ms")
            self.components += [WARM, PENALTY, TRAFFIC]
            functions[WARM] = lambda arch: latency.decode_terms(arch, context).warm
            functions[PENALTY] = lambda arch: latency.decode_terms(arch, context).penalty
            functions[TRAFFIC] = lambda arch: latency.decode_terms(arch, context).traffic
        self.tuples = space.width_tuples()
        self._keys = self._key(self.tuples)
        a = space.axes
        w, r, d = space.shape
        self.block = {}
        self.fixed = {}
        for name in self.components:
            price = functions[name]
            single = np.array(
                [price(space.make_arch((Block(a.widths[i], a.ratios[k], a.depths[m]),))) for i in range(w) for k in range(r) for m in range(d)]
            ).reshape(w, r, d)
            # A one-block arch is fixed(E) + block(E, R, L); fixed does not change with R and L.
            block = single - single[:, :1, :1]
            block += self._layer_only(space, price, a.ratios[0], a.depths[0])[:, None, None]
            self.block[name] = block
            base = np.array([price(space.to_arch(np.stack([t, np.zeros_like(t), np.zeros_like(t)], axis=1))) for t in self.tuples])
            self.fixed[name] = base - block[self.tuples, 0, 0].sum(axis=1)

    @staticmethod
    def _layer_only(space: SearchSpace, price, ratio, depth) -> np.ndarray:
        """block(E, R0, L0): the two-block difference that removes everything fixed."""
        # arch(E, E) - arch(E) adds one block and no projection: exactly block(E, R0, L0).
        two = np.array([price(space.make_arch((Block(e, ratio, depth),) * 2)) for e in space.axes.widths])
        one = np.array([price(space.make_arch((Block(e, ratio, depth),))) for e in space.axes.widths])
        return two - one

    def _key(self, width_idx: np.ndarray) -> np.ndarray:
        base = self.space.shape[0] ** np.arange(self.space.blocks - 1, -1, -1)
        return np.asarray(width_idx) @ base

    def tuple_index(self, genomes: np.ndarray) -> np.ndarray:
        """Row of `width_tuples()` for each genome's widths."""
        return np.searchsorted(self._keys, self._key(genomes[..., WIDTH]))

    def totals(self, genomes: np.ndarray) -> np.ndarray:
        """Every component of every genome, shape (n, components)."""
        g = np.asarray(genomes)
        t = self.tuple_index(g)
        parts = [self.fixed[k][t] + self.block[k][g[..., WIDTH], g[..., RATIO], g[..., DEPTH]].sum(axis=-1) for k in self.components]
        return np.stack(parts, axis=-1) if parts else np.zeros((len(g), 0))

    def metrics(self, totals: np.ndarray) -> dict[str, np.ndarray]:
        """The bounded metrics from component totals of shape (..., components)."""
        column = {k: totals[..., i] for i, k in enumerate(self.components)}
        if self.latency is not None:
            column["latency_ms"] = column[WARM] + self.latency.miss_fraction(column[TRAFFIC]) * column[PENALTY]
        return {k: column[k] for k in self.names}

    def within(self, totals: np.ndarray) -> np.ndarray:
        """Whether component totals of shape (..., components) meet every budget."""
        ok = np.ones(totals.shape[:-1], dtype=bool)
        for name, value in self.metrics(totals).items():
            ok &= value <= self.limits[name]
        return ok

    def evaluate(self, genomes: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric of every genome, shape (n,) each."""
        return self.metrics(self.totals(genomes))

    def feasible(self, genomes: np.ndarray) -> np.ndarray:
        return self.within(self.totals(genomes))
