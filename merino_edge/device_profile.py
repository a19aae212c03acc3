"""The device profile (`profile.json`): measured latency of every part of a MeRino model.

`merino-edge profile` writes it on the board; the latency model of the search
(`merino_edge.search.latency`) reads it.  Every timing is in milliseconds at
batch 1 and *net* of the per-call overhead: the profiler times an empty graph
on the same backend and subtracts its median, and stores that median once as
`overhead_ms`, so a whole model's latency is the overhead plus the sum of its
parts.  Decode is timed warm (weights in cache) and, when `flush_bytes` > 0,
also cold (caches flushed before every run): `merino_edge.search.latency`
combines both the way a model step meets its parts, with the share of the
cold penalty fitted on a few whole models timed in the same run
(`calibration`, optional).

Parts, as `ArchSpec` builds a model:
- `layers`: one transformer layer for every (E, R) of the space; decode is one
  token over a KV cache of each length in `decode_contexts` (the past length),
  prefill is a prompt of each length in `prefill_lengths` (no past);
- `embedding`: token + position embedding lookup at the projection dim P;
- `projections`: every (in, out) linear the space can need (P->E, E->E', E->P);
- `final_norms`: the final LayerNorm at each width E;
- `head`: the tied LM head, P -> vocab.

stdlib + numpy only: this module is read on the board and by the search.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from merino_edge.arch import HEAD_DIM, MAX_POSITIONS, PROJ_DIM, TABLE5, VOCAB_SIZE, Axes
from merino_edge.errors import InputError
from merino_edge.fileio import check_schema, read_json, write_json_atomic

SCHEMA_VERSION = 1
BACKENDS = ("ort", "tensorrt", "torch")
DEVICE_KINDS = ("cpu", "jetson", "gpu")


@dataclass(frozen=True)
class Timing:
    """Median and spread (ms) of one part, one value per grid point (context or length)."""

    median_ms: tuple[float, ...]
    spread_ms: tuple[float, ...]

    def to_json(self) -> dict:
        return {"median_ms": list(self.median_ms), "spread_ms": list(self.spread_ms)}

    @classmethod
    def from_json(cls, data: dict, where: str, points: int) -> Timing:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with median_ms and spread_ms")
        median = _floats(data.get("median_ms"), f"{where}.median_ms")
        spread = _floats(data.get("spread_ms"), f"{where}.spread_ms")
        if len(median) != points or len(spread) != points:
            raise InputError(f"{where}: expected {points} values in median_ms and spread_ms, got {len(median)} and {len(spread)}")
        return cls(median, spread)


@dataclass(frozen=True)
class PartTiming:
    """Decode (per grid context) and prefill (per grid length) timings of one part.

    `decode` is timed with the part's weights in cache (run after run);
    `decode_cold`, when measured, with the CPU caches flushed before every run,
    as a part meets them inside a whole model step.
    """

    decode: Timing
    prefill: Timing
    decode_cold: Timing | None = None

    def to_json(self) -> dict:
        out = {"decode": self.decode.to_json(), "prefill": self.prefill.to_json()}
        if self.decode_cold is not None:
            out["decode_cold"] = self.decode_cold.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict, where: str, decode_points: int, prefill_points: int) -> PartTiming:
        if not isinstance(data, dict):
            raise InputError(f"{where}: expected an object with decode and prefill")
        cold = data.get("decode_cold")
        return cls(
            Timing.from_json(data.get("decode"), f"{where}.decode", decode_points),
            Timing.from_json(data.get("prefill"), f"{where}.prefill", prefill_points),
            None if cold is None else Timing.from_json(cold, f"{where}.decode_cold", decode_points),
        )


@dataclass(frozen=True)
class DeviceInfo:
    """What ran the measurements: a Jetson board, a CPU, or a GPU."""

    kind: str  # cpu | jetson | gpu
    board: str | None = None
    l4t: str | None = None
    jetpack: str | None = None
    power_mode: str | None = None
    clocks_locked: bool | None = None
    cpu_model: str | None = None
    threads: int | None = None
    gpu: str | None = None

    def describe(self) -> str:
        if self.kind == "jetson":
            return f"{self.board} (L4T {self.l4t}, JetPack {self.jetpack}, mode {self.power_mode}, clocks {'locked' if self.clocks_locked else 'not locked'})"
        if self.kind == "gpu":
            return f"{self.gpu}"
        return f"{self.cpu_model} ({self.threads} threads)"


@dataclass(frozen=True)
class BackendInfo:
    """The backend and precision the parts were timed on, with library versions."""

    name: str  # ort | tensorrt | torch
    precision: str  # fp32 | fp16
    provider: str | None = None
    versions: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """How each timing was taken."""

    warmup: int  # runs before timing (1 for runs slower than seconds_per_point)
    repetitions: int  # at least this many per grid point (3 for runs slower than seconds_per_point) ...
    max_repetitions: int | None = None  # ... and more, up to this many, until seconds_per_point is spent
    seconds_per_point: float | None = None
    statistic: str = "median"
    spread: str = "iqr"  # interquartile range of the repetitions
    clock: str = "wall"  # wall: elapsed time; cpu: this process's CPU time (one thread; immune to other load)
    flush_bytes: int = 0  # > 0: decode was also timed cold, after writing a buffer this large before every run
    quick: bool = False


@dataclass(frozen=True)
class Calibration:
    """How whole models combine their parts on this device, fitted on a few timed whole models.

    A decode step pays a share mu of its parts' cold penalty (cold - warm), with
    mu = clip(miss_intercept + miss_slope * ln(traffic / 1 MiB), 0, 1) and traffic
    the bytes a step moves (`search.latency.step_traffic_bytes`); a prefill is
    the sum of its parts times `prefill_scales` (one per profiled prompt length).  `archs` (short names) were used
    for the fit, so `profile validate` leaves them out; the MAPEs are the fit's own.
    """

    archs: tuple[str, ...]
    miss_intercept: float
    miss_slope: float
    prefill_scales: tuple[float, ...]
    decode_mape: float
    prefill_mape: float
    points: int

    def to_json(self) -> dict:
        return {**asdict(self), "archs": list(self.archs), "prefill_scales": list(self.prefill_scales)}

    @classmethod
    def from_json(cls, data: dict, prefill_points: int) -> Calibration:
        calibration = _build(cls, data, "calibration")
        scales = _floats(calibration.prefill_scales, "device profile: calibration.prefill_scales")
        numbers = (calibration.miss_intercept, calibration.miss_slope)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers):
            raise InputError("device profile: calibration needs finite miss_intercept and miss_slope")
        if len(scales) != prefill_points or min(scales) <= 0:
            raise InputError(f"device profile: calibration needs {prefill_points} positive prefill_scales, one per prefill length")
        return replace(calibration, archs=tuple(str(a) for a in _list(data["archs"], "calibration.archs")), prefill_scales=scales)


@dataclass(frozen=True)
class DeviceProfile:
    """Per-part latency tables of one device + backend + precision (see the module doc)."""

    device: DeviceInfo
    backend: BackendInfo
    measurement: Measurement
    axes: Axes
    decode_contexts: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    overhead_ms: float
    layers: dict[tuple[int, float], PartTiming]
    embedding: PartTiming
    projections: dict[tuple[int, int], PartTiming]
    final_norms: dict[int, PartTiming]
    head: PartTiming
    vocab_size: int = VOCAB_SIZE
    proj_dim: int = PROJ_DIM
    head_dim: int = HEAD_DIM
    max_positions: int = MAX_POSITIONS
    overhead_cold_ms: float | None = None  # the call overhead with flushed caches (see PartTiming)
    calibration: Calibration | None = None
    created: str = ""

    # ------------------------------------------------------------- checks

    def layer(self, width: int, ratio: float) -> PartTiming:
        """The timing of one layer of (width, ratio); InputError when the profile lacks it."""
        key = (int(width), _ratio_key(ratio))
        try:
            return self.layers[key]
        except KeyError:
            raise InputError(f"device profile: no layer timing for E={width}, R={ratio:g}") from None

    def missing(self, axes: Axes) -> list[str]:
        """Parts an architecture from `axes` may need that this profile lacks."""
        out = [f"layer E={e} R={r:g}" for e in axes.widths for r in axes.ratios if (e, _ratio_key(r)) not in self.layers]
        out += [f"projection {a}->{b}" for a, b in needed_projections(axes, self.proj_dim) if (a, b) not in self.projections]
        out += [f"final norm E={e}" for e in axes.widths if e not in self.final_norms]
        return out

    def check_space(self, axes: Axes) -> None:
        """Raise InputError naming what is missing for an architecture search over `axes`."""
        missing = self.missing(axes)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise InputError(f"device profile does not cover the search space: missing {', '.join(missing[:5])}{more}")

    # --------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "created": self.created,
            "device": _plain(self.device),
            "backend": _plain(self.backend),
            "measurement": _plain(self.measurement),
            "space": self.axes.to_json(),
            "model": {
                "vocab_size": self.vocab_size,
                "proj_dim": self.proj_dim,
                "head_dim": self.head_dim,
                "max_positions": self.max_positions,
            },
            "decode_contexts": list(self.decode_contexts),
            "prefill_lengths": list(self.prefill_lengths),
            "overhead_ms": self.overhead_ms,
            "overhead_cold_ms": self.overhead_cold_ms,
            "layers": [{"width": e, "ratio": r, **t.to_json()} for (e, r), t in sorted(self.layers.items())],
            "embedding": self.embedding.to_json(),
            "projections": [{"in": a, "out": b, **t.to_json()} for (a, b), t in sorted(self.projections.items())],
            "final_norms": [{"width": e, **t.to_json()} for e, t in sorted(self.final_norms.items())],
            "head": self.head.to_json(),
            **({"calibration": self.calibration.to_json()} if self.calibration else {}),
        }

    @classmethod
    def from_json(cls, data: dict) -> DeviceProfile:
        check_schema(data, "device profile", SCHEMA_VERSION, fix="profile the device again")
        try:
            contexts = tuple(_ints(data["decode_contexts"], "decode_contexts"))
            lengths = tuple(_ints(data["prefill_lengths"], "prefill_lengths"))
            for name, grid in (("decode_contexts", contexts), ("prefill_lengths", lengths)):
                if not grid or list(grid) != sorted(set(grid)) or grid[0] < 0:
                    raise InputError(f"device profile: {name} must be a non-empty increasing list of non-negative integers")
            nd, npf = 1, len(lengths)

            def part(raw, where, decode_points=nd):
                return PartTiming.from_json(raw, f"device profile: {where}", decode_points, npf)

            layers = {}
            for j, raw in enumerate(_list(data["layers"], "layers")):
                layers[(int(raw["width"]), _ratio_key(float(raw["ratio"])))] = part(raw, f"layers[{j}]", len(contexts))
            projections = {}
            for j, raw in enumerate(_list(data["projections"], "projections")):
                projections[(int(raw["in"]), int(raw["out"]))] = part(raw, f"projections[{j}]")
            final_norms = {
                int(raw["width"]): part(raw, f"final_norms[{j}]") for j, raw in enumerate(_list(data["final_norms"], "final_norms"))
            }
            model = data.get("model", {})
            device = _build(DeviceInfo, data["device"], "device")
            backend = _build(BackendInfo, data["backend"], "backend")
            if device.kind not in DEVICE_KINDS:
                raise InputError(f"device profile: device.kind {device.kind!r} is not one of {', '.join(DEVICE_KINDS)}")
            if backend.name not in BACKENDS:
                raise InputError(f"device profile: backend.name {backend.name!r} is not one of {', '.join(BACKENDS)}")
            measurement = _build(Measurement, data["measurement"], "measurement")
            if measurement.clock not in ("wall", "cpu"):
                raise InputError(f"device profile: measurement.clock {measurement.clock!r} is not wall or cpu")
            overhead = float(data["overhead_ms"])
            if not math.isfinite(overhead) or overhead < 0:
                raise InputError(f"device profile: overhead_ms must be a non-negative number, got {overhead!r}")
            return cls(
                device=device,
                backend=backend,
                measurement=measurement,
                axes=Axes.from_json(data["space"]),
                decode_contexts=contexts,
                prefill_lengths=lengths,
                overhead_ms=overhead,
                overhead_cold_ms=None if data.get("overhead_cold_ms") is None else float(data["overhead_cold_ms"]),
                layers=layers,
                embedding=part(data["embedding"], "embedding"),
                projections=projections,
                final_norms=final_norms,
                head=part(data["head"], "head"),
                calibration=None if data.get("calibration") is None else Calibration.from_json(data["calibration"], npf),
                created=str(data.get("created", "")),
                **{k: int(model[k]) for k in ("vocab_size", "proj_dim", "head_dim", "max_positions") if k in model},
            )
        except KeyError as exc:
            raise InputError(f"device profile: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"device profile: malformed ({exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed over the target)."""
        return write_json_atomic(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: str | Path, backend: str | None = None, axes: Axes | None = None) -> DeviceProfile:
        """Read `profile.json`; refuse another backend than `backend` and gaps in `axes`.

        Without `axes` the profile must cover the space it says it was measured over.
        """
        data = read_json(path, "device profile")
        try:
            profile = cls.from_json(data)
            if backend is not None and profile.backend.name != backend:
                raise InputError(
                    f"device profile was measured on backend {profile.backend.name!r}, not {backend!r}: profile again with --backend {backend}"
                )
            profile.check_space(axes or profile.axes)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        return profile


# ------------------------------------------------------------------ helpers


def _ratio_key(ratio: float) -> float:
    """Ratios are keyed rounded, so 2.5 from JSON and 2.5 from Axes meet."""
    return round(float(ratio), 6)


def needed_projections(axes: Axes = TABLE5, proj_dim: int = PROJ_DIM) -> list[tuple[int, int]]:
    """Every (in, out) projection an architecture over `axes` may contain: P->E, E->E' (E < E'), E->P."""
    ws = sorted(set(axes.widths))
    pairs = {(proj_dim, e) for e in ws} | {(e, proj_dim) for e in ws} | {(a, b) for a in ws for b in ws if a < b}
    return sorted((a, b) for a, b in pairs if a != b)


def _plain(obj) -> dict:
    return dict(asdict(obj))


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise InputError(f"device profile: {where}: expected an object")
    known = cls.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"device profile: {where}: unknown field(s) {', '.join(unknown)}")
    return cls(**raw)


def _list(raw, where: str) -> list:
    if not isinstance(raw, list):
        raise InputError(f"device profile: {where}: expected a list")
    return raw


def _ints(raw, where: str) -> list[int]:
    return [int(v) for v in _list(raw, where)]


def _floats(raw, where: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in _list(raw, where))
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise InputError(f"{where}: timings must be finite and non-negative")
    return values
