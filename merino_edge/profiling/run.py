"""`merino-edge profile`: time every part of a MeRino model on this device.

The parts (`merino_edge.profiling.parts`) are micro-graphs that
`merino_edge.profiling.export` exports through the same ONNX export path as whole
models into a work directory, indexed by `graphs.json`.  This module times them,
torch-free, on ONNX Runtime (or on any other `profiling.runner.Runner`, e.g. the
torch one in `profiling.export`), and writes the `DeviceProfile`.  `run_profile`
is the whole command: export what is missing (where torch is), pick the runner,
time, calibrate.

Timing (`profiling.timing`) follows the runtime: every input and output is bound
once to a preallocated buffer (IOBinding), so a step costs what the graph
costs.  Each grid point gets warm-up runs, then repetitions until a time target
(between a minimum and a maximum count); the median and the interquartile range
are kept.  Decode is timed twice: warm (run after run) and cold (a buffer of
twice the last-level cache written before every run).  An empty graph gives
the fixed per-call overhead, which is subtracted from every part.  The clock is
wall time, or the process's CPU time (`clock="cpu"`, one thread) on a machine
that other work keeps busy.

A whole model step is neither all warm nor all cold: on a large cache part of
the model survives from one step to the next.  So the profile also times a few
random whole models (`calibrate`, `profiling.whole_models`) and fits how much of the
cold penalty a step pays as a function of the bytes it moves
(`search.latency.fit_calibration`).  Results are saved atomically after every
part and every whole model, so a killed run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from merino_edge import host
from merino_edge.arch import TABLE5, Axes
from merino_edge.device_profile import BackendInfo, Calibration, DeviceInfo, DeviceProfile, Measurement, PartTiming, Timing
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.fileio import write_json_atomic
from merino_edge.jetson import board as board_info
from merino_edge.profiling.parts import GRAPHS_FILE, MicroGraphs, Part
from merino_edge.profiling.runner import OrtRunner, Runner
from merino_edge.profiling.timing import CLOCKS, measure
from merino_edge.profiling.whole_models import CALIBRATION_DIR, WholeModel, model_dirs, time_models
from merino_edge.search.latency import Sample, fit_calibration

log = logging.getLogger(__name__)

STATE_FILE = "partial.json"
BACKENDS = ("ort", "tensorrt", "torch")


@dataclass(frozen=True)
class Grid:
    """Where (contexts, prompt lengths) and how (`Measurement`) each part is timed."""

    decode_contexts: tuple[int, ...]
    prefill_lengths: tuple[int, ...]
    measurement: Measurement

    def to_json(self) -> dict:
        return {"decode_contexts": list(self.decode_contexts), "prefill_lengths": list(self.prefill_lengths), **asdict(self.measurement)}

    @classmethod
    def from_json(cls, data: dict) -> Grid:
        rest = {k: v for k, v in data.items() if k not in ("decode_contexts", "prefill_lengths")}
        try:
            return cls(tuple(int(c) for c in data["decode_contexts"]), tuple(int(s) for s in data["prefill_lengths"]), Measurement(**rest))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"profile grid: needs decode_contexts, prefill_lengths and Measurement fields ({exc})") from None


# Written before every cold run: twice the last-level cache, at least 64 MiB (a smaller flush
# leaves much of a layer in a large cache, and a model step does not).
FLUSH_BYTES = max(64 << 20, 2 * (host.last_level_cache_bytes() or 0))
FULL = Grid(
    (0, 128, 512, 1024, 2047),
    (16, 64, 256, 1024),
    Measurement(warmup=5, repetitions=15, max_repetitions=300, seconds_per_point=0.6, flush_bytes=FLUSH_BYTES),
)
QUICK = Grid(
    (0, 512, 2047),
    (16, 128, 512),
    Measurement(warmup=3, repetitions=7, max_repetitions=100, seconds_per_point=0.2, flush_bytes=FLUSH_BYTES, quick=True),
)


# -------------------------------------------------------------- profiling


def describe_device(threads: int, gpu: str | None = None, root: str | Path = "/") -> DeviceInfo:
    """A Jetson board (with power mode and clock state), else a GPU by name, else the CPU and threads."""
    from merino_edge.jetson import power

    board = board_info.detect_board(root)
    if board is not None:
        try:
            mode = power.power_mode(root)
            mode_name = f"{mode.id} ({mode.name})"
        except Exception:  # noqa: BLE001 - nvpmodel missing or failing: the profile says unknown
            mode_name = None
        return DeviceInfo(
            kind="jetson",
            board=board.model,
            l4t=board.l4t,
            jetpack=board.jetpack,
            power_mode=mode_name,
            clocks_locked=board_info.clocks_locked(root),
            cpu_model=host.cpu_model(root),
            threads=threads,
            gpu=gpu,
        )
    return DeviceInfo(kind="gpu" if gpu else "cpu", cpu_model=host.cpu_model(root), threads=threads, gpu=gpu)


def _part_points(part: Part, grid: Grid) -> list[tuple[str, int, int]]:
    """(phase, seq_len, past_len) of every point this part is timed at."""
    contexts = grid.decode_contexts if part.kind == "layer" else grid.decode_contexts[:1]
    return [("decode", 1, c) for c in contexts] + [("prefill", s, 0) for s in grid.prefill_lengths]


def _weight(part: Part, grid: Grid) -> float:
    """Rough relative cost of timing a part, for the progress bar's time left."""
    size = float(part.params)
    return sum(max(size * s, 1e5) for _, s, _ in _part_points(part, grid)) + 1e6


class _State:
    """Raw results in `partial.json`, saved atomically after every part and every calibration model."""

    def __init__(self, path: Path, settings: dict):
        self.path, self.settings = path, settings
        self.parts: dict[str, dict] = {}
        self.models: dict[str, list] = {}  # calibration: arch short name -> rounds of [[phase, tokens, median, iqr], ...]
        if path.exists():
            try:
                data = json.loads(path.read_text())
            except ValueError:
                data = {}
            if data.get("settings") == settings:
                self.parts, self.models = data.get("parts", {}), data.get("models", {})
            elif data:
                raise InputError(
                    f"{path} holds a partial profile made with other settings ({data.get('settings')}); use another --workdir or delete it"
                )

    def save(self) -> None:
        write_json_atomic(self.path, {"settings": self.settings, "parts": self.parts, "models": self.models})


def profile_parts(graphs: MicroGraphs, grid: Grid, runner: Runner, state: _State, progress: bool = True) -> dict[str, dict]:
    """Time every part of `graphs` at every grid point on `runner`, resuming from `state`.

    Returns {part name: {"decode": [[median, iqr, repetitions], ...], "prefill": [...], "decode_cold": [...]}};
    decode_cold is timed when the grid's measurement has flush_bytes > 0.
    """
    from tqdm import tqdm

    nbytes = grid.measurement.flush_bytes
    flush = runner.flush(nbytes) if nbytes > 0 else None
    todo = [p for p in graphs.parts if p.name not in state.parts]
    weights = {p.name: _weight(p, grid) for p in graphs.parts}
    done_weight = sum(weights[name] for name in state.parts if name in weights)
    bar = tqdm(
        total=sum(weights.values()),
        initial=done_weight,
        disable=not progress,
        desc="profile",
        bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]",
    )
    with bar:
        for part in todo:
            bar.set_description(f"profile {part.name:<18}")
            result: dict[str, list] = {"decode": [], "prefill": [], "decode_cold": []}
            for phase, seq_len, past_len in _part_points(part, grid):
                run = runner.bind(part, seq_len, past_len)
                result[phase].append(list(measure(run, grid.measurement)))
                if phase == "decode" and flush is not None:
                    result["decode_cold"].append(list(measure(run, grid.measurement, before=flush)))
            state.parts[part.name] = result
            state.save()
            bar.update(weights[part.name])
    return state.parts


def calibrate(profile: DeviceProfile, models: list[WholeModel], state: _State, progress: bool = True) -> Calibration:
    """Time `models` over the profile's grid (resuming from `state`) and fit the latency model to them."""
    timed = time_models(
        models, profile.device.threads, profile.measurement, profile.decode_contexts, profile.prefill_lengths,
        record=state.models, on_update=state.save, progress=progress, desc="calibrate",
    )  # fmt: skip
    return fit_calibration(profile, [Sample(arch, phase, tokens, median) for arch, timings in timed for phase, tokens, median, _ in timings])


def _timing(points, base: float = 0.0) -> Timing:
    return Timing(tuple(max(0.0, m - base) for m, _, _ in points), tuple(s for _, s, _ in points))


def _net(raw: dict, overhead: float, overhead_cold: float | None) -> PartTiming:
    cold = _timing(raw["decode_cold"], overhead_cold) if raw.get("decode_cold") else None
    return PartTiming(_timing(raw["decode"], overhead), _timing(raw["prefill"], overhead), cold)


def assemble_profile(graphs: MicroGraphs, results: dict, grid: Grid, device: DeviceInfo, backend: BackendInfo) -> DeviceProfile:
    """Build the DeviceProfile from raw results: every part net of the measured call overhead."""
    for part in graphs.parts:
        if part.name not in results:
            raise InputError(f"part {part.name} has not been timed yet: run the profile again to finish it")
    raw_overhead = results[graphs.of_kind("overhead")[0].name]
    overhead = raw_overhead["decode"][0][0]
    overhead_cold = raw_overhead["decode_cold"][0][0] if raw_overhead.get("decode_cold") else None
    net = {p.name: _net(results[p.name], overhead, overhead_cold) for p in graphs.parts}
    model = graphs.model
    return DeviceProfile(
        device=device,
        backend=backend,
        measurement=grid.measurement,
        axes=graphs.axes,
        decode_contexts=grid.decode_contexts,
        prefill_lengths=grid.prefill_lengths,
        overhead_ms=overhead,
        overhead_cold_ms=overhead_cold,
        layers={(p.width, p.ratio): net[p.name] for p in graphs.of_kind("layer")},
        embedding=net[graphs.of_kind("embedding")[0].name],
        projections={(p.in_dim, p.out_dim): net[p.name] for p in graphs.of_kind("projection")},
        final_norms={p.width: net[p.name] for p in graphs.of_kind("final_norm")},
        head=net[graphs.of_kind("head")[0].name],
        vocab_size=model["vocab_size"],
        proj_dim=model["proj_dim"],
        head_dim=model["head_dim"],
        max_positions=model["max_positions"],
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def check_grid(grid: Grid, max_positions: int) -> Grid:
    """Drop grid points past the model's positions; InputError if nothing is left."""
    contexts = tuple(c for c in grid.decode_contexts if c + 1 <= max_positions)
    lengths = tuple(s for s in grid.prefill_lengths if s <= max_positions)
    if not contexts or not lengths:
        raise InputError(f"no profile grid point fits max positions {max_positions}")
    return replace(grid, decode_contexts=contexts, prefill_lengths=lengths)


def profile_device(
    workdir: str | Path,
    out: str | Path,
    *,
    threads: int | None = None,
    quick: bool = False,
    clock: str = "wall",
    flush_bytes: int | None = None,
    grid: Grid | None = None,
    runner: Runner | None = None,
    calibration: list[WholeModel] | None = None,
    progress: bool = True,
) -> DeviceProfile:
    """Time every part and write the device profile to `out`; partial results stay in `workdir`.

    Without `runner` the ONNX micro-graphs of `workdir` run on ONNX Runtime
    (`OrtRunner`); `profiling.export.TorchRunner` times the torch modules instead.
    `clock` "cpu" times this process's CPU time instead of elapsed time: on a
    machine shared with other work it measures what an idle core would take
    (one thread only).  `flush_bytes` sets the buffer written before every cold
    decode run (0: no cold timings).  `grid` replaces the FULL / QUICK grids
    (and their clock and flush).  `calibration` names whole models
    (`profiling.whole_models`, ONNX Runtime) to fit the latency model's cache share and
    prefill scale on (`search.latency.fit_calibration`).  Interrupted, it keeps
    what it timed; the next call with the same `workdir` and settings continues
    from there.
    """
    workdir = Path(workdir)
    threads = threads or host.usable_cpus()
    if threads < 1:
        raise InputError(f"threads: must be at least 1, got {threads}")
    runner = runner or OrtRunner(workdir, threads)
    graphs, backend = runner.graphs, runner.backend_info
    if clock not in CLOCKS:
        raise InputError(f"clock {clock!r}: choose one of {', '.join(CLOCKS)}")
    if clock == "cpu" and runner.gpu is not None:
        raise InputError("--clock cpu times this process's CPU, not the GPU: profile a GPU with --clock wall")
    if clock == "cpu" and threads != 1:
        raise InputError(f"--clock cpu adds up the CPU time of every thread: use it with --threads 1, not {threads}")
    if grid is None:
        grid = QUICK if quick else FULL
        flush = grid.measurement.flush_bytes if flush_bytes is None else flush_bytes
        grid = replace(grid, measurement=replace(grid.measurement, clock=clock, flush_bytes=flush))
    grid = check_grid(grid, graphs.model["max_positions"])
    workdir.mkdir(parents=True, exist_ok=True)
    device = describe_device(threads, runner.gpu)
    if device.kind == "jetson" and not device.clocks_locked:
        log.warning("clocks are not locked: timings will vary with DVFS (sudo jetson_clocks before profiling)")
    # The device is part of the settings: a work dir copied from another machine never resumes with its timings.
    settings = {
        "device": device.describe(),
        "backend": backend.name,
        "precision": backend.precision,
        "threads": threads,
        "grid": grid.to_json(),
    }
    state = _State(workdir / STATE_FILE, settings)
    results = profile_parts(graphs, grid, runner, state, progress=progress)
    profile = assemble_profile(graphs, results, grid, device, backend)
    if calibration:
        profile = replace(profile, calibration=calibrate(profile, calibration, state, progress=progress))
    profile.save(out)
    return profile


@dataclass(frozen=True)
class ProfileConfig:
    """What `merino-edge profile` does (the command's flags and their defaults come from here)."""

    out: Path = Path("profile.json")
    workdir: Path | None = None  # micro-graphs and partial results; default: beside `out`, one per backend and precision
    backend: str = "ort"  # what the parts are timed on: ort, tensorrt or torch
    precision: str | None = None  # fp32 or fp16; default fp16 on tensorrt, else fp32
    device: str | None = None  # torch: cpu or cuda (default cuda when available); tensorrt: the GPU index (default 0)
    threads: int | None = None  # default: every CPU this process may use
    quick: bool = False  # fewer contexts, lengths and repetitions (every (E, R) is still timed)
    clock: str = "wall"  # cpu: this process's CPU time, for a machine busy with other work (one thread)
    flush_mib: int | None = None  # written before each cold decode run; default: twice the last-level cache, >= 64
    # 8: on the development machine 12 models fitted no better on held-out ones (docs/device-profile.md).
    calibration: int = 8  # whole random models to fit the cache share and prefill scales on (ort backend; 0: none)
    export_only: bool = False  # only export into the work dir (where torch is), for a board without torch
    axes: Axes = TABLE5  # the space whose parts are timed
    model: dict = field(default_factory=dict)  # vocab_size, proj_dim, max_positions other than Table 5's
    grid: Grid | None = None  # replaces the FULL / QUICK grid (with its clock and flush)
    progress: bool = True

    @property
    def graph_precision(self) -> str:
        return self.precision or ("fp16" if self.backend == "tensorrt" else "fp32")

    @property
    def work_dir(self) -> Path:
        out = Path(self.out)
        return Path(self.workdir or out.with_name(f"{out.stem}.{self.backend}-{self.graph_precision}.work"))


@dataclass(frozen=True)
class ProfileRun:
    """What `run_profile` did: the work dir, the profile (None when it only exported) and the calibration models."""

    workdir: Path
    profile: DeviceProfile | None
    calibration: list[WholeModel]


def _torch_export():
    """`profiling.export` where torch is installed; MissingDependencyError naming the way out on a board without it."""
    try:
        from merino_edge.profiling import export
    except ImportError as exc:
        raise MissingDependencyError(
            f"exporting the micro-graphs needs torch ({exc}); run `merino-edge profile --export-only --workdir DIR` "
            "where torch is installed and pass that DIR here as --workdir"
        ) from None
    return export


def _runner(cfg: ProfileConfig, workdir: Path) -> Runner | None:
    """The runner of `cfg.backend` over `workdir` (None: ONNX Runtime, which `profile_device` makes itself)."""
    if cfg.backend == "torch":
        return _torch_export().TorchRunner(cfg.graph_precision, cfg.device, cfg.threads, axes=cfg.axes, **cfg.model)
    if cfg.backend == "tensorrt":
        from merino_edge.profiling.tensorrt import TensorRTRunner

        return TensorRTRunner(workdir, device=int(cfg.device or 0))
    return None


def run_profile(cfg: ProfileConfig) -> ProfileRun:
    """`merino-edge profile`: export what the work dir lacks (where torch is), then time it and write `cfg.out`.

    On a machine without torch (a board) the work dir must hold the micro-graphs,
    and the calibration models, exported elsewhere with `export_only`.
    """
    precision = cfg.graph_precision
    if cfg.backend not in BACKENDS:
        raise InputError(f"backend {cfg.backend!r}: choose one of {', '.join(BACKENDS)}")
    if cfg.backend == "tensorrt" and precision != "fp16":
        raise InputError("profile --backend tensorrt builds FP16 engines: use --precision fp16 (the default for tensorrt)")
    if cfg.backend == "tensorrt":
        from merino_edge.runtime.backends.tensorrt import import_tensorrt

        import_tensorrt()  # a missing TensorRT says so before anything is exported
    if cfg.calibration < 0:
        raise InputError(f"--calibration must be 0 or more, got {cfg.calibration}")
    workdir = cfg.work_dir
    exported = (workdir / GRAPHS_FILE).exists()
    try:
        export = _torch_export()
    except MissingDependencyError:
        if cfg.backend == "torch" or cfg.export_only or not exported:
            raise
        export = None  # on a board: the work dir was exported where torch is
    if export is not None and cfg.backend != "torch" and not exported:
        export.export_micro_graphs(workdir, precision=precision, axes=cfg.axes, progress=cfg.progress, **cfg.model)
    # Whole models to calibrate on: timed on ONNX Runtime, so not for the torch backend.
    calibration: list[WholeModel] = []
    if cfg.calibration and cfg.backend == "ort":
        if export is not None:
            calibration = export.export_calibration_models(workdir, cfg.calibration, precision=precision, progress=cfg.progress)
        else:
            calibration = model_dirs(workdir / CALIBRATION_DIR)[: cfg.calibration]
    if cfg.export_only:
        return ProfileRun(workdir, None, calibration)
    flush = None if cfg.flush_mib is None else cfg.flush_mib << 20
    profile = profile_device(
        workdir, cfg.out, threads=cfg.threads, quick=cfg.quick, clock=cfg.clock, flush_bytes=flush, grid=cfg.grid,
        runner=_runner(cfg, workdir), calibration=calibration, progress=cfg.progress,
    )  # fmt: skip
    return ProfileRun(workdir, profile, calibration)


def summary(profile: DeviceProfile) -> str:
    """A few lines for the terminal: device, backend, grid and the range of layer costs."""
    decode = [t.decode.median_ms[0] for t in profile.layers.values()]
    lines = [
        f"device:   {profile.device.describe()}",
        f"backend:  {profile.backend.name} {profile.backend.precision} ({profile.backend.provider})",
        f"grid:     decode contexts {list(profile.decode_contexts)}, prefill lengths {list(profile.prefill_lengths)}"
        + (" (quick)" if profile.measurement.quick else ""),
        f"timing:   {profile.measurement.clock} clock, {profile.measurement.statistic} of >= {profile.measurement.repetitions} runs; "
        f"overhead {profile.overhead_ms:.3f} ms per call; head {profile.head.decode.median_ms[0]:.3f} ms per token",
        f"layers:   {len(profile.layers)} (E, R); decode at context {profile.decode_contexts[0]}: "
        f"{min(decode):.3f} .. {max(decode):.3f} ms",
    ]
    c = profile.calibration
    if c is not None:
        lines.append(
            f"calibration: {len(c.archs)} whole models, {c.points} timings; share of the cold penalty "
            f"mu = clip({c.miss_intercept:.3f} + {c.miss_slope:.3f} ln(traffic / MiB), 0, 1); prefill x {' / '.join(f'{v:.2f}' for v in c.prefill_scales)}; "
            f"fit MAPE decode {c.decode_mape:.2f} %, prefill {c.prefill_mape:.2f} %"
        )
    return "\n".join(lines)
