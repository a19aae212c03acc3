"""`merino-edge doctor`: what this machine can run, and which backend `serve` picks.

Torch-free and quick: torch is looked up by its installed metadata, never imported.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from merino_edge import __version__
from merino_edge.errors import MerinoError

SCHEMA_VERSION = 1


@dataclass
class Finding:
    """One line of the report: what was looked at, what was found, and whether it is usable."""

    topic: str
    detail: str
    ok: bool

    def to_json(self) -> dict:
        return {"topic": self.topic, "detail": self.detail, "ok": self.ok}


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)
    backend: str = "ort"  # what `serve --backend auto` picks
    reason: str = ""
    precision: str | None = None  # the graph it runs there (with a bundle)
    schema_version: int = SCHEMA_VERSION

    def add(self, topic: str, detail: str, ok: bool = True) -> None:
        self.findings.append(Finding(topic, detail, ok))

    def __getitem__(self, topic: str) -> Finding:
        return next(f for f in self.findings if f.topic == topic)

    def to_json(self) -> dict:
        return {
            "schema_version": self.schema_version,
            "findings": [f.to_json() for f in self.findings],
            "backend": self.backend,
            "reason": self.reason,
            "precision": self.precision,
        }

    def render(self) -> str:
        width = max(len(f.topic) for f in self.findings)
        lines = [f"{'ok ' if f.ok else '-- '} {f.topic:<{width}}  {f.detail}" for f in self.findings]
        graph = f", {self.precision} graph" if self.precision else ""
        lines.append(f"serve picks: {self.backend}{graph} ({self.reason})")
        return "\n".join(lines)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> tuple[list[str], str | None]:
    """GPU lines ("name, compute cap, memory") and the driver's CUDA version, from nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None
    try:
        query = subprocess.run(
            [exe, "--query-gpu=name,compute_cap,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        )
        header = subprocess.run([exe], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return [], None
    gpus = [line.strip() for line in query.stdout.splitlines() if line.strip()] if query.returncode == 0 else []
    match = re.search(r"CUDA Version:\s*([\d.]+)", header.stdout)
    return gpus, match.group(1) if match else None


def _cuda_toolkit(root: Path = Path("/usr/local/cuda")) -> str | None:
    """The CUDA toolkit version from /usr/local/cuda/version.json (JetPack and x86 installs)."""
    try:
        return json.loads((root / "version.json").read_text())["cuda"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _jetson(report: DoctorReport, board) -> None:
    from merino_edge.jetson.board import clocks_locked
    from merino_edge.jetson.power import power_mode

    if board is None:
        report.add("jetson", "not a Jetson", ok=False)
        return
    report.add("jetson", f"{board.model}, L4T {board.l4t or '?'}, JetPack {board.jetpack or '?'}")
    try:
        mode = power_mode()
        report.add("power mode", f"{mode.name} (nvpmodel mode {mode.id})")
    except MerinoError as exc:
        report.add("power mode", str(exc), ok=False)
    locked = clocks_locked()
    report.add("clocks", {True: "locked (jetson_clocks)", False: "not locked: timings vary (sudo jetson_clocks)", None: "unknown"}[locked], ok=bool(locked))


def _tensorrt(report: DoctorReport) -> tuple[object | None, str]:
    """The usable `tensorrt` module (version 10 or newer), or None and why not."""
    from merino_edge.runtime.backends.tensorrt import INSTALL_HINT, version_problem

    try:
        import tensorrt as trt
    except ImportError:
        report.add("tensorrt", INSTALL_HINT.replace("TensorRT is not installed: ", "not installed; "), ok=False)
        return None, "TensorRT is not installed"
    problem = version_problem(trt.__version__)
    if problem:
        report.add("tensorrt", problem, ok=False)
        return None, f"TensorRT {trt.__version__} is too old"
    report.add("tensorrt", trt.__version__)
    return trt, ""


def _pick(report: DoctorReport, trt, missing: str, bundle: str | Path | None) -> None:
    """The backend `create_backend(bundle, "auto")` would choose, and why."""
    from merino_edge.bundle import Bundle

    loaded = None if bundle is None else Bundle.load(bundle, verify=False)
    if trt is None:
        report.backend, report.reason = "ort", missing
        return
    if not report["cuda bindings"].ok:
        report.backend, report.reason = "ort", "TensorRT needs pycuda or cuda-python"
        return
    if loaded is None:
        report.backend = "tensorrt"
        report.reason = "for a bundle with an engine built here by `merino-edge build`; ort for a bundle without one"
        return
    from merino_edge.runtime.backends.cuda_memory import open_cuda
    from merino_edge.runtime.backends.tensorrt import usable_engine

    cuda = open_cuda()
    try:
        usable_engine(loaded, trt, cuda)
    except MerinoError as exc:
        report.backend, report.reason = "ort", str(exc)
        return
    finally:
        cuda.close()
    report.backend, report.reason = "tensorrt", f"{bundle} has an engine built on this machine"


def _pick_graph(report: DoctorReport, bundle: str | Path, precision: str | None) -> None:
    """The graph ONNX Runtime would run on this CPU: the one asked for, or `auto`'s choice and why."""
    from merino_edge.bundle import Bundle

    loaded = Bundle.load(bundle, verify=False)
    if precision not in (None, "auto"):
        loaded.onnx_path(precision)  # a graph the bundle lacks is an input error
        report.precision = precision
        return
    report.precision, why = loaded.cpu_precision()
    report.add("cpu graph", f"{report.precision} ({why})")


def run_doctor(bundle: str | Path | None = None, precision: str | None = None) -> DoctorReport:
    """Look at this machine (and, if given, whether it can run `bundle`'s engine, and which graph ONNX Runtime runs)."""
    from merino_edge.jetson.board import detect_board
    from merino_edge.runtime.backends.cuda_memory import available_cuda_bindings

    report = DoctorReport()
    report.add("merino-edge", f"{__version__} on Python {platform.python_version()} ({platform.machine()})")
    trt, missing = _tensorrt(report)
    bindings = available_cuda_bindings()
    report.add("cuda bindings", ", ".join(bindings) if bindings else "none (pip install pycuda)", ok=bool(bindings))
    gpus, driver_cuda = _nvidia_smi()
    toolkit = _cuda_toolkit()
    cuda = ", ".join(x for x in (toolkit and f"toolkit {toolkit}", driver_cuda and f"driver supports {driver_cuda}") if x)
    report.add("cuda", cuda or "not found (no /usr/local/cuda, no nvidia-smi)", ok=bool(cuda))
    board = detect_board()
    if gpus:
        report.add("gpu", "; ".join(gpus))
    else:
        report.add("gpu", f"integrated GPU of the {board.model}" if board else "none found by nvidia-smi", ok=board is not None)
    try:
        import onnxruntime

        report.add("onnxruntime", f"{onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}")
    except ImportError:
        report.add("onnxruntime", "not installed (pip install onnxruntime)", ok=False)
    _jetson(report, board)
    torch_version = _version("torch")
    report.add("torch", f"{torch_version} (training and export only; serving never imports it)" if torch_version else "not installed (not needed to serve)")
    _pick(report, trt, missing, bundle)
    if bundle is not None and report.backend == "ort":
        _pick_graph(report, bundle, precision)
    return report
