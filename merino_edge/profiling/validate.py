"""`merino-edge profile validate`: does the latency model predict whole models?

Random architectures from the search space are exported as real model graphs
and timed exactly as the profile timed its parts (`profiling.whole_models`).  The
architectures the profile calibrated on are left out, so every point is held
out from the fit.  The report gives the mean
absolute percentage error, the share of predictions within +-10 % and the
Spearman rank correlation of predicted vs measured decode latency (and prefill
at one prompt length), with a scatter plot.  `run_validation` is the whole
command: export the models where torch is, or time those exported elsewhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from merino_edge.arch import load_arch
from merino_edge.device_profile import DeviceProfile
from merino_edge.errors import InputError
from merino_edge.fileio import write_json_atomic
from merino_edge.profiling.whole_models import ROUNDS, WholeModel, model_dirs, random_archs, time_models
from merino_edge.rank_correlation import spearman
from merino_edge.search.latency import LatencyModel

SCHEMA_VERSION = 1
DECODE_CONTEXTS = (100, 1000)
PREFILL_LENGTHS = (100,)


@dataclass
class Point:
    """One architecture at one context (decode) or prompt length (prefill)."""

    arch: str
    phase: str  # decode | prefill
    tokens: int  # the context for decode, the prompt length for prefill
    predicted_ms: float
    measured_ms: float
    spread_ms: float

    @property
    def error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms


@dataclass
class Metrics:
    count: int
    mape: float  # mean absolute percentage error, in %
    within_10: float  # share of predictions within +-10 %, in %
    spearman: float | None  # None for fewer than two points

    @classmethod
    def of(cls, points: list[Point]) -> Metrics:
        predicted = np.array([p.predicted_ms for p in points])
        measured = np.array([p.measured_ms for p in points])
        errors = np.abs(predicted - measured) / measured
        rho = spearman(predicted, measured) if len(points) > 1 else None
        return cls(len(points), float(100 * errors.mean()), float(100 * (errors <= 0.10).mean()), rho)


@dataclass
class ValidationReport:
    profile: str
    device: str
    backend: str
    threads: int
    decode: Metrics
    prefill: Metrics | None
    points: list[Point] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        return {"schema_version": SCHEMA_VERSION, **data}

    def summary(self) -> str:
        lines = [f"validated {self.profile} on {self.device}, {self.backend}, {self.threads} threads"]
        for name, m in (("decode", self.decode), ("prefill", self.prefill)):
            if m is not None:
                rho = "n/a" if m.spearman is None else f"{m.spearman:.4f}"
                lines.append(f"{name:8s} n={m.count:3d}  MAPE {m.mape:5.2f} %  within +-10 %: {m.within_10:5.1f} %  Spearman {rho}")
        return "\n".join(lines)


def validate_profile(
    profile_path: str | Path,
    models: list[WholeModel],
    out_dir: str | Path,
    *,
    decode_contexts: tuple[int, ...] = DECODE_CONTEXTS,
    prefill_lengths: tuple[int, ...] = PREFILL_LENGTHS,
    skip_calibrated: bool = True,
    rounds: int = ROUNDS,
    progress: bool = True,
) -> ValidationReport:
    """Time `models` like the profile timed its parts.

    Models are timed in `rounds` rounds over all of them (`profiling.whole_models.time_models`),
    as the profile's calibration was.  With `skip_calibrated`, architectures the
    profile was calibrated on are left out.  Writes validation.json and
    validation.png into `out_dir`.
    """

    profile = DeviceProfile.load(profile_path)
    too_long = [n for n in (*decode_contexts, *prefill_lengths) if n + 1 > profile.max_positions or n < 0]
    if too_long:
        raise InputError(f"contexts and prompt lengths must lie in 0..{profile.max_positions - 1}: got {too_long}")
    if profile.backend.name != "ort":
        raise InputError(f"validate times ONNX Runtime models; {profile_path} was measured on {profile.backend.name!r}")
    model = LatencyModel(profile)
    threads = profile.device.threads
    calibrated = set(profile.calibration.archs) if profile.calibration and skip_calibrated else set()
    points: list[Point] = []
    for arch, timings in time_models(models, threads, profile.measurement, decode_contexts, prefill_lengths, rounds=rounds, progress=progress, desc="validate"):
        if arch.short() in calibrated:
            continue  # fitted on: not a test of the model
        for phase, tokens, median, spread in timings:
            predicted = model.decode_ms(arch, tokens) if phase == "decode" else model.prefill_ms(arch, tokens)
            points.append(Point(arch.short(), phase, tokens, predicted, median, spread))
    if not points:
        raise InputError("every architecture to validate was one the profile calibrated on: validate with other ones")
    decode = [p for p in points if p.phase == "decode"]
    prefill = [p for p in points if p.phase == "prefill"]
    report = ValidationReport(
        profile=str(profile_path),
        device=profile.device.describe(),
        backend=f"{profile.backend.name} {profile.backend.precision}",
        threads=threads,
        decode=Metrics.of(decode),
        prefill=Metrics.of(prefill) if prefill else None,
        points=points,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "validation.json", report.to_json())
    plot_validation(report, out_dir / "validation.png")
    return report


def plot_validation(report: ValidationReport, path: Path) -> Path:
    """Predicted vs measured latency, one panel per phase, with y = x and the +-10 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [(name, metrics) for name, metrics in (("decode", report.decode), ("prefill", report.prefill)) if metrics]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 5), squeeze=False)
    for ax, (phase, metrics) in zip(axes[0], phases, strict=True):
        pts = [p for p in report.points if p.phase == phase]
        for tokens in sorted({p.tokens for p in pts}):
            sel = [p for p in pts if p.tokens == tokens]
            label = f"context {tokens}" if phase == "decode" else f"prompt {tokens}"
            ax.errorbar(
                [p.measured_ms for p in sel], [p.predicted_ms for p in sel], xerr=[p.spread_ms / 2 for p in sel], fmt="o", ms=4, label=label
            )
        lo = min(min(p.measured_ms, p.predicted_ms) for p in pts) * 0.9
        hi = max(max(p.measured_ms, p.predicted_ms) for p in pts) * 1.1
        line = np.array([lo, hi])
        ax.plot(line, line, "k-", lw=1, label="predicted = measured")
        ax.fill_between(line, line * 0.9, line * 1.1, color="gray", alpha=0.2, label="+-10 %")
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured (ms)", ylabel="predicted (ms)")
        rho = "n/a" if metrics.spearman is None else f"{metrics.spearman:.3f}"
        ax.set_title(f"{phase}: MAPE {metrics.mape:.1f} %, {metrics.within_10:.0f} % within +-10 %, rho {rho}", fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(f"{report.device} | {report.backend}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class ValidateConfig:
    """What `merino-edge profile validate` does (the command's flags and their defaults come from here)."""

    profile: Path  # the profile.json to validate
    out: Path = Path("validation")  # validation.json and validation.png go here
    workdir: Path | None = None  # the exported models; default: OUT/models (where torch is not, they must be there)
    archs: int = 30  # random architectures to time
    seed: int = 0  # of the random architectures
    arch: tuple[Path, ...] = ()  # time these arch.json instead of random ones
    contexts: tuple[int, ...] = DECODE_CONTEXTS  # decode contexts to time
    progress: bool = True


def run_validation(cfg: ValidateConfig) -> ValidationReport:
    """`merino-edge profile validate`: export the models to time (where torch is), then time and report them."""
    profile = DeviceProfile.load(cfg.profile)
    models_dir = Path(cfg.workdir or Path(cfg.out) / "models")
    try:
        from merino_edge.profiling.export import export_validation_models
    except ImportError:  # on the board: time the models exported elsewhere
        models = model_dirs(models_dir)
    else:
        dims = {k: getattr(profile, k) for k in ("vocab_size", "proj_dim", "head_dim", "max_positions")}
        calibrated = profile.calibration.archs if profile.calibration else ()
        archs = [load_arch(a) for a in cfg.arch] or random_archs(cfg.archs, profile.axes, seed=cfg.seed, exclude=calibrated, **dims)
        models = export_validation_models(archs, models_dir, precision=profile.backend.precision, progress=cfg.progress)
    # Random archs are held out from the calibration; archs the user names are timed whatever they are.
    return validate_profile(cfg.profile, models, cfg.out, decode_contexts=tuple(cfg.contexts), skip_calibrated=not cfg.arch, progress=cfg.progress)
