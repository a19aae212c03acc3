"""`merino-edge profile validate`: does the latency model predict whole models?

Random architectures from the search space are exported as real model graphs
(`export.micro.export_validation_models`, on a machine with torch), then timed
here, torch-free, exactly as the profile timed its parts: same backend, threads,
session options, IOBinding and repetition rule.  The report gives the mean
absolute percentage error, the share of predictions within +-10 % and the
Spearman rank correlation of predicted vs measured decode latency (and prefill
at one prompt length), with a scatter plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block, load_arch
from merino_edge.device_profile import DeviceProfile
from merino_edge.errors import InputError
from merino_edge.export.parts import ARCH_FILE, GRAPH_FILE
from merino_edge.fileio import write_json_atomic
from merino_edge.jetson.profile import measure, ort_runner, ort_session
from merino_edge.rank_correlation import spearman
from merino_edge.search.latency import LatencyModel

SCHEMA_VERSION = 1
DECODE_CONTEXTS = (100, 1000)
PREFILL_LENGTHS = (100,)


def random_archs(n: int, axes: Axes = TABLE5, blocks: int = 4, seed: int = 0, **model) -> list[ArchSpec]:
    """`n` distinct random architectures of `blocks` blocks over `axes` (widths non-decreasing).

    `model` sets the other ArchSpec fields (vocab_size, proj_dim, ...), e.g. from the profile.
    """
    if n < 1:
        raise InputError(f"--archs must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    out: list[ArchSpec] = []
    seen = set()
    while len(out) < n:
        widths = sorted(int(w) for w in rng.choice(axes.widths, size=blocks))
        arch = ArchSpec(tuple(Block(w, float(rng.choice(axes.ratios)), int(rng.choice(axes.depths))) for w in widths), **model)
        if arch.short() not in seen:
            seen.add(arch.short())
            out.append(arch)
    return out


def graph_shapes(arch: ArchSpec) -> tuple[dict, dict]:
    """Shape templates (as in graphs.json) of the whole model graph's inputs and outputs."""
    inputs = {"input_ids": [1, "s"], "position_ids": [1, "s"], "attention_mask": [1, "t"]}
    outputs = {"logits": [1, "s", arch.vocab_size]}
    for i, heads in enumerate(arch.layer_heads()):
        for kv in ("key", "value"):
            inputs[f"past.{i}.{kv}"] = [1, heads, "c", arch.head_dim]
            outputs[f"present.{i}.{kv}"] = [1, heads, "t", arch.head_dim]
    return inputs, outputs


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


def model_dirs(models_dir: str | Path) -> list[Path]:
    """The exported architectures under `models_dir` (each a folder with arch.json and model.onnx)."""
    dirs = sorted(d for d in Path(models_dir).glob("*") if (d / ARCH_FILE).exists() and (d / GRAPH_FILE).exists())
    if not dirs:
        raise InputError(f"no exported architectures under {models_dir} (folders with {ARCH_FILE} and {GRAPH_FILE})")
    return dirs


def validate_profile(
    profile_path: str | Path,
    folders: list[Path],
    out_dir: str | Path,
    *,
    decode_contexts: tuple[int, ...] = DECODE_CONTEXTS,
    prefill_lengths: tuple[int, ...] = PREFILL_LENGTHS,
    progress: bool = True,
) -> ValidationReport:
    """Time the model in each folder (arch.json + model.onnx) like the profile timed its parts.

    Writes validation.json and validation.png into `out_dir`.
    """
    from tqdm import tqdm

    profile = DeviceProfile.load(profile_path)
    too_long = [n for n in (*decode_contexts, *prefill_lengths) if n + 1 > profile.max_positions or n < 0]
    if too_long:
        raise InputError(f"contexts and prompt lengths must lie in 0..{profile.max_positions - 1}: got {too_long}")
    if profile.backend.name != "ort":
        raise InputError(f"validate times ONNX Runtime models; {profile_path} was measured on {profile.backend.name!r}")
    model = LatencyModel(profile)
    threads = profile.device.threads
    points: list[Point] = []
    for folder in tqdm(folders, desc="validate", disable=not progress):
        arch = load_arch(folder / ARCH_FILE)
        session = ort_session(folder / GRAPH_FILE, threads)
        inputs, outputs = graph_shapes(arch)
        grid = [("decode", 1, c, model.decode_ms(arch, c)) for c in decode_contexts]
        grid += [("prefill", s, 0, model.prefill_ms(arch, s)) for s in prefill_lengths]
        for phase, seq_len, past_len, predicted in grid:
            run = ort_runner(session, inputs, outputs, seq_len, past_len, arch.vocab_size)
            median, spread, _ = measure(run, profile.measurement)
            points.append(Point(arch.short(), phase, past_len if phase == "decode" else seq_len, predicted, median, spread))
        del session
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
            ax.errorbar([p.measured_ms for p in sel], [p.predicted_ms for p in sel], xerr=[p.spread_ms / 2 for p in sel], fmt="o", ms=4, label=label)
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
