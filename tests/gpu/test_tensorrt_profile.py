"""`profile --backend tensorrt` on a tiny space: run on a CUDA machine with TensorRT, skipped elsewhere."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorrt", reason="TensorRT is not installed: run these on a Jetson or a CUDA machine (docs/tensorrt.md)")
pytest.importorskip("torch", reason="exporting the micro-graphs needs torch")

from merino_edge.arch import ArchSpec, Axes, Block  # noqa: E402
from merino_edge.device_profile import DeviceProfile, Measurement  # noqa: E402
from merino_edge.profiling.export import export_micro_graphs  # noqa: E402
from merino_edge.profiling.run import STATE_FILE, Grid, profile_device  # noqa: E402
from merino_edge.profiling.tensorrt import ENGINES_DIR, TensorRTRunner  # noqa: E402
from merino_edge.runtime.backends.cuda_memory import available_cuda_bindings  # noqa: E402
from merino_edge.search.latency import LatencyModel  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

AXES = Axes(widths=(64, 128), ratios=(1.0, 2.0), depths=(1, 2))
MODEL = {"vocab_size": 256, "proj_dim": 128, "max_positions": 128}


def test_tensorrt_profile_times_every_part_and_reuses_its_engines(tmp_path):
    if not available_cuda_bindings():
        pytest.skip("the TensorRT backend needs pycuda or cuda-python")
    workdir = tmp_path / "work"
    export_micro_graphs(workdir, precision="fp16", axes=AXES, progress=False, **MODEL)
    grid = Grid((0, 32, 127), (8, 32), Measurement(warmup=2, repetitions=5, flush_bytes=64 << 20))
    profile = profile_device(workdir, tmp_path / "p.json", grid=grid, runner=TensorRTRunner(workdir), progress=False)

    assert profile.backend.name == "tensorrt" and profile.backend.precision == "fp16"
    assert profile.device.kind in ("gpu", "jetson") and profile.device.gpu
    assert profile.layers.keys() == {(e, r) for e in AXES.widths for r in AXES.ratios}
    assert all(t.decode_cold is not None for t in profile.layers.values())
    engines = sorted((workdir / ENGINES_DIR).glob("*.engine"))
    assert len(engines) == len(profile.layers) + len(profile.projections) + len(profile.final_norms) + 3  # + overhead, embedding, head
    arch = ArchSpec((Block(64, 1.0, 2), Block(128, 2.0, 1)), **MODEL)
    model = LatencyModel(DeviceProfile.load(tmp_path / "p.json", backend="tensorrt"))
    assert model.decode_ms(arch, 100) > model.decode_ms(arch, 0) > 0

    stamps = {p: p.stat().st_mtime_ns for p in engines}
    (workdir / STATE_FILE).unlink()  # time everything again: the engines are loaded, not built
    profile_device(workdir, tmp_path / "q.json", grid=grid, runner=TensorRTRunner(workdir), progress=False)
    assert {p: p.stat().st_mtime_ns for p in engines} == stamps
