"""Predicted latency of a whole architecture from a device profile.

A model's latency is additive over its parts (the profile stores every part net
of the per-call overhead).  One decode step with c tokens in the KV cache:

    decode_ms(arch, c) = overhead + embedding + sum of projections + final norm + head
                         + sum_j L_j * layer(E_j, R_j, c)

A step streams the whole model through the caches, so every part is taken
cold (the profile's `decode_cold`, timed after a cache flush; profiles without
it use the warm timings).  Repeated executions of a shared layer count as cold
too: each reads its own KV cache, and on the development machine timing a
layer twice in a row did not give a repeat cost that predicted whole models
better (see docs/device-profile.md).  Costs are interpolated linearly between
the profiled contexts (attention over the cache is linear in c) and extended
along the last segment.  `prefill_ms(arch, s)` is the same sum over a prompt of
s tokens (compute-bound: warm timings), interpolated between the profiled
prompt lengths.  The exact solver can use the additivity: `block_ms` per block
plus `fixed_ms` for the rest.

numpy only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from merino_edge.arch import ArchSpec, Block
from merino_edge.device_profile import DeviceProfile, PartTiming
from merino_edge.errors import InputError


class LatencyModel:
    """Decode and prefill latency (ms, batch 1) predicted from a `DeviceProfile`."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile
        self._contexts = np.asarray(profile.decode_contexts, dtype=float)
        self._lengths = np.asarray(profile.prefill_lengths, dtype=float)
        self._cache: dict[tuple, float] = {}

    @classmethod
    def from_file(cls, path: str | Path, backend: str | None = None, axes=None) -> LatencyModel:
        return cls(DeviceProfile.load(path, backend=backend, axes=axes))

    # -------------------------------------------------------------- parts

    @property
    def overhead_ms(self) -> float:
        """The fixed cost of one call into the backend, paid once per step."""
        p = self.profile
        return p.overhead_ms if p.overhead_cold_ms is None else p.overhead_cold_ms

    @staticmethod
    def _decode_timing(timing: PartTiming):
        """The cold decode timing when profiled, else the warm one."""
        return timing.decode if timing.decode_cold is None else timing.decode_cold

    def layer_ms(self, width: int, ratio: float, context: int) -> float:
        """One execution of a (width, ratio) layer in a decode step, its weights and KV cache not in cache."""
        key = (width, ratio, context)
        if key not in self._cache:
            timing = self._decode_timing(self.profile.layer(width, ratio))
            self._cache[key] = _interp(self._contexts, timing.median_ms, context)
        return self._cache[key]

    def block_ms(self, block: Block, context: int) -> float:
        """All `block.depth` executions of a block's layer in one decode step (each meets its weights cold)."""
        return block.depth * self.layer_ms(block.width, block.ratio, context)

    def layer_prefill_ms(self, width: int, ratio: float, seq_len: int) -> float:
        """One layer of (width, ratio) over a prompt of `seq_len` tokens."""
        return _interp(self._lengths, self.profile.layer(width, ratio).prefill.median_ms, seq_len)

    def _part(self, timing: PartTiming, seq_len: int | None) -> float:
        if seq_len is None:
            return self._decode_timing(timing).median_ms[0]  # one token: the context does not matter
        return _interp(self._lengths, timing.prefill.median_ms, seq_len)

    def fixed_ms(self, arch: ArchSpec, context: int = 0, seq_len: int | None = None) -> float:
        """Everything but the layers: overhead, embedding, projections, final norm and head.

        Decode (one token; `context` does not change these parts) unless `seq_len` is given.
        """
        self._check(arch)
        p = self.profile
        overhead = self.overhead_ms if seq_len is None else p.overhead_ms
        total = overhead + self._part(p.embedding, seq_len) + self._part(p.head, seq_len)
        for pair in arch.projections():
            if pair not in p.projections:
                raise InputError(f"device profile: no timing for the projection {pair[0]}->{pair[1]}")
            total += self._part(p.projections[pair], seq_len)
        last = arch.blocks[-1].width
        if last not in p.final_norms:
            raise InputError(f"device profile: no timing for the final norm at E={last}")
        return total + self._part(p.final_norms[last], seq_len)

    # ------------------------------------------------------------- totals

    def decode_ms(self, arch: ArchSpec, context: int) -> float:
        """Latency of one decode step (one new token) with `context` tokens in the KV cache."""
        return self.fixed_ms(arch, context) + sum(self.block_ms(b, context) for b in arch.blocks)

    def prefill_ms(self, arch: ArchSpec, seq_len: int) -> float:
        """Latency of the forward pass over a prompt of `seq_len` tokens (empty cache)."""
        if seq_len < 1:
            raise InputError(f"prefill length must be >= 1, got {seq_len}")
        layers = sum(b.depth * self.layer_prefill_ms(b.width, b.ratio, seq_len) for b in arch.blocks)
        return self.fixed_ms(arch, seq_len=seq_len) + layers

    def breakdown(self, arch: ArchSpec, context: int) -> dict[str, float]:
        """Decode latency split into fixed parts and one entry per block (ms)."""
        out = {"fixed": self.fixed_ms(arch, context)}
        for j, b in enumerate(arch.blocks):
            out[f"block{j}"] = self.block_ms(b, context)
        return out

    def _check(self, arch: ArchSpec) -> None:
        p = self.profile
        for name in ("vocab_size", "proj_dim", "head_dim"):
            if getattr(arch, name) != getattr(p, name):
                raise InputError(f"device profile was measured for {name} {getattr(p, name)}, the arch has {getattr(arch, name)}")


def _interp(grid: np.ndarray, values, x: float) -> float:
    """Piecewise-linear in x through (grid, values), extended along the end segments, never negative."""
    v = np.asarray(values, dtype=float)
    if len(grid) == 1:
        return float(v[0])
    if x <= grid[0]:
        i = 0
    elif x >= grid[-1]:
        i = len(grid) - 2
    else:
        i = int(np.searchsorted(grid, x, side="right")) - 1
    slope = (v[i + 1] - v[i]) / (grid[i + 1] - grid[i])
    return max(0.0, float(v[i] + slope * (x - grid[i])))
