"""Predicted latency of a whole architecture from a device profile.

Every part is stored net of the per-call overhead, warm (run after run) and
cold (caches flushed first).  One decode step with c tokens in the KV cache:

    decode_ms(arch, c) = warm(arch, c) + mu(traffic) * penalty(arch, c)

`warm` is the call overhead plus the warm timings of the embedding, the
projections, the final norm, the head and every layer execution (depth times
the layer of each block); `penalty` is the same sum of (cold - warm).  A step
streams the whole model, so how much of the cold penalty it pays depends on
how its traffic compares with the caches: mu is the share of the penalty paid,

    mu(traffic) = clip(a + b * ln(traffic / 1 MiB), 0, 1),
    traffic     = weight bytes + 3 x KV-cache bytes at context c

(`step_traffic_bytes`: a shared layer's repeats find their weights in cache;
the past K/V is read and the present copy written).  `a` and `b` are fitted by
the profiler on a few whole models timed with the parts (`fit_calibration`);
a profile without that calibration takes every part cold (mu = 1), the right
answer for a board whose last-level cache is far smaller than any model.
Costs are interpolated linearly between the profiled contexts and extended
along the last segment.

Prefill over s tokens is compute-bound: the call overhead plus the warm parts
at s, interpolated between the profiled prompt lengths, times the calibrated
scale for s (one per profiled length, interpolated in ln s: short prompts
cost far more than their parts on the development machine, long ones about 10 %).

warm, penalty and traffic are each additive over blocks (`decode_terms`), and
the latency is non-decreasing in each (the penalty is never negative): the
search's cost tables and exact solver rely on both (`search.budgets`).

numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from merino_edge.arch import ArchSpec
from merino_edge.device_profile import Calibration, DeviceProfile, PartTiming
from merino_edge.errors import InputError

KV_TRAFFIC = 3  # a step reads the past K and V and writes the present copy (write-allocate: read, then write back)
MIB = float(1 << 20)
BYTES_PER_VALUE = {"fp32": 4, "fp16": 2}


def step_traffic_bytes(arch: ArchSpec, context: int, bytes_per_value: int) -> float:
    """Bytes one decode step moves: every stored weight once and the KV cache KV_TRAFFIC times."""
    return float(arch.weight_bytes(bytes_per_value) + KV_TRAFFIC * context * arch.kv_cache_bytes_per_token(bytes_per_value))


@dataclass(frozen=True)
class StepTerms:
    """A decode step's additive terms: warm sum (ms), cold penalty (ms) and traffic (bytes)."""

    warm: float
    penalty: float
    traffic: float


class LatencyModel:
    """Decode and prefill latency (ms, batch 1) predicted from a `DeviceProfile`."""

    def __init__(self, profile: DeviceProfile):
        self.profile = profile
        self._contexts = np.asarray(profile.decode_contexts, dtype=float)
        self._lengths = np.asarray(profile.prefill_lengths, dtype=float)
        self._bytes = BYTES_PER_VALUE.get(profile.backend.precision, 4)
        self._cache: dict[tuple, tuple[float, float]] = {}

    @classmethod
    def from_file(cls, path: str | Path, backend: str | None = None, axes=None) -> LatencyModel:
        return cls(DeviceProfile.load(path, backend=backend, axes=axes))

    # ------------------------------------------------------ cache model

    @property
    def cache_aware(self) -> bool:
        """True when mu depends on the architecture (a calibrated profile with cold timings)."""
        c = self.profile.calibration
        return c is not None and c.miss_slope != 0 and self.profile.overhead_cold_ms is not None

    def miss_fraction(self, traffic):
        """mu: the share of the cold penalty a step moving `traffic` bytes pays (numpy arrays too)."""
        c = self.profile.calibration
        if c is None:
            return np.ones_like(traffic, dtype=float) if isinstance(traffic, np.ndarray) else 1.0
        mu = np.clip(c.miss_intercept + c.miss_slope * np.log(np.maximum(traffic, 1.0) / MIB), 0.0, 1.0)
        return mu if isinstance(traffic, np.ndarray) else float(mu)

    # -------------------------------------------------------------- parts

    @staticmethod
    def _split(timing: PartTiming, grid: np.ndarray, x: float) -> tuple[float, float]:
        """(warm, cold - warm) of one part's decode timing at x (no penalty without cold timings).

        A cold run faster than the warm one is noise: the penalty is never negative.
        """
        warm = _interp(grid, timing.decode.median_ms, x)
        if timing.decode_cold is None:
            return warm, 0.0
        return warm, max(0.0, _interp(grid, timing.decode_cold.median_ms, x) - warm)

    def layer_terms(self, width: int, ratio: float, context: int) -> tuple[float, float]:
        """(warm ms, cold penalty ms) of one execution of a (width, ratio) layer in a decode step."""
        key = (width, ratio, context)
        if key not in self._cache:
            self._cache[key] = self._split(self.profile.layer(width, ratio), self._contexts, context)
        return self._cache[key]

    def layer_prefill_ms(self, width: int, ratio: float, seq_len: int) -> float:
        """One layer of (width, ratio) over a prompt of `seq_len` tokens (uncalibrated)."""
        return _interp(self._lengths, self.profile.layer(width, ratio).prefill.median_ms, seq_len)

    def _fixed_parts(self, arch: ArchSpec) -> list[PartTiming]:
        """Embedding, head, every projection and the final norm of `arch`."""
        self._check(arch)
        p = self.profile
        parts = [p.embedding, p.head]
        for pair in arch.projections():
            if pair not in p.projections:
                raise InputError(f"device profile: no timing for the projection {pair[0]}->{pair[1]}")
            parts.append(p.projections[pair])
        last = arch.blocks[-1].width
        if last not in p.final_norms:
            raise InputError(f"device profile: no timing for the final norm at E={last}")
        return [*parts, p.final_norms[last]]

    # ------------------------------------------------------------- totals

    def decode_terms(self, arch: ArchSpec, context: int) -> StepTerms:
        """warm, penalty and traffic of one decode step with `context` tokens in the KV cache."""
        p = self.profile
        cold_overhead = p.overhead_ms if p.overhead_cold_ms is None else p.overhead_cold_ms
        warm, penalty = p.overhead_ms, max(0.0, cold_overhead - p.overhead_ms)
        one = np.zeros(1)  # parts other than layers are timed at one context
        for timing in self._fixed_parts(arch):
            w, d = self._split(timing, one, 0)
            warm, penalty = warm + w, penalty + d
        for b in arch.blocks:
            w, d = self.layer_terms(b.width, b.ratio, context)
            warm, penalty = warm + b.depth * w, penalty + b.depth * d
        return StepTerms(warm, penalty, step_traffic_bytes(arch, context, self._bytes))

    def decode_ms(self, arch: ArchSpec, context: int) -> float:
        """Latency of one decode step (one new token) with `context` tokens in the KV cache."""
        t = self.decode_terms(arch, context)
        return t.warm + self.miss_fraction(t.traffic) * t.penalty

    def prefill_parts_ms(self, arch: ArchSpec, seq_len: int) -> float:
        """The sum of the parts over a prompt of `seq_len` tokens, before calibration and overhead."""
        if seq_len < 1:
            raise InputError(f"prefill length must be >= 1, got {seq_len}")
        parts = sum(_interp(self._lengths, t.prefill.median_ms, seq_len) for t in self._fixed_parts(arch))
        return parts + sum(b.depth * self.layer_prefill_ms(b.width, b.ratio, seq_len) for b in arch.blocks)

    def prefill_ms(self, arch: ArchSpec, seq_len: int) -> float:
        """Latency of the forward pass over a prompt of `seq_len` tokens (empty cache)."""
        c = self.profile.calibration
        scale = 1.0 if c is None else float(np.interp(np.log(seq_len), np.log(self._lengths), c.prefill_scales))
        return self.profile.overhead_ms + scale * self.prefill_parts_ms(arch, seq_len)

    def breakdown(self, arch: ArchSpec, context: int) -> dict[str, float]:
        """Decode latency split into the fixed parts and one entry per block (ms), at this arch's mu."""
        t = self.decode_terms(arch, context)
        mu = self.miss_fraction(t.traffic)
        out = {}
        for j, b in enumerate(arch.blocks):
            w, d = self.layer_terms(b.width, b.ratio, context)
            out[f"block{j}"] = b.depth * (w + mu * d)
        return {"fixed": t.warm + mu * t.penalty - sum(out.values()), **out}

    def _check(self, arch: ArchSpec) -> None:
        p = self.profile
        for name in ("vocab_size", "proj_dim", "head_dim"):
            if getattr(arch, name) != getattr(p, name):
                raise InputError(f"device profile was measured for {name} {getattr(p, name)}, the arch has {getattr(arch, name)}")


@dataclass(frozen=True)
class Sample:
    """One whole model timed on the device: decode at a context or prefill at a prompt length."""

    arch: ArchSpec
    phase: str  # decode | prefill
    tokens: int
    measured_ms: float


def fit_calibration(profile: DeviceProfile, samples: list[Sample]) -> Calibration:
    """Fit mu's a and b (decode) and the prefill scales to whole models, by relative least squares.

    A negative slope (less of the penalty for more traffic: noise, not caches)
    falls back to one constant share of the penalty.
    """
    model = LatencyModel(replace(profile, calibration=None))
    decode = [s for s in samples if s.phase == "decode"]
    prefill = [s for s in samples if s.phase == "prefill"]
    if not decode or not prefill:
        raise InputError("calibration needs decode and prefill timings of whole models")
    measured = np.array([s.measured_ms for s in decode])
    terms = [model.decode_terms(s.arch, s.tokens) for s in decode]
    penalty = np.array([t.penalty for t in terms]) / measured
    excess = np.array([s.measured_ms - t.warm for s, t in zip(decode, terms, strict=True)]) / measured
    log_traffic = np.log(np.array([t.traffic for t in terms]) / MIB)
    (a, b), *_ = np.linalg.lstsq(np.c_[penalty, penalty * log_traffic], excess, rcond=None)
    if not b > 0:
        a, b = float(penalty @ excess / max(penalty @ penalty, 1e-12)), 0.0
    scales = []
    for length in profile.prefill_lengths:
        at = [s for s in prefill if s.tokens == length]
        if not at:
            raise InputError(f"calibration needs prefill timings at every profiled prompt length; none at {length}")
        parts = np.array([model.prefill_parts_ms(s.arch, length) / s.measured_ms for s in at])
        wanted = np.array([(s.measured_ms - profile.overhead_ms) / s.measured_ms for s in at])
        scales.append(float(parts @ wanted / (parts @ parts)))
    fitted = LatencyModel(replace(profile, calibration=Calibration((), float(a), float(b), tuple(scales), 0.0, 0.0, 0)))

    def mape(points, predict) -> float:
        return float(100 * np.mean([abs(predict(s.arch, s.tokens) / s.measured_ms - 1) for s in points]))

    return Calibration(
        archs=tuple(dict.fromkeys(s.arch.short() for s in samples)),
        miss_intercept=float(a),
        miss_slope=float(b),
        prefill_scales=tuple(scales),
        decode_mape=mape(decode, fitted.decode_ms),
        prefill_mape=mape(prefill, fitted.prefill_ms),
        points=len(samples),
    )


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
