"""Profiling a tiny space on ONNX Runtime: an interrupted run resumes to the same profile grid."""

import importlib.util
import json
import shutil
from dataclasses import replace

import pytest

from merino_edge.arch import ArchSpec, Block
from merino_edge.cli import main
from merino_edge.device_profile import DeviceProfile
from merino_edge.errors import InputError
from merino_edge.profiling.run import QUICK, STATE_FILE, Grid, profile_device
from merino_edge.profiling.runner import OrtRunner
from merino_edge.search.latency import LatencyModel

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def fresh(tiny, tmp_path, name):
    return shutil.copytree(tiny.graphs, tmp_path / name)


class Interrupted(OrtRunner):
    """ONNX Runtime runners that raise KeyboardInterrupt (a Ctrl-C) when part `stop_at` starts."""

    def __init__(self, workdir, threads, stop_at):
        super().__init__(workdir, threads)
        self.stop_at, self.seen = stop_at, []

    def bind(self, part, seq_len, past_len):
        if part.name not in self.seen:
            self.seen.append(part.name)
        if len(self.seen) > self.stop_at:
            raise KeyboardInterrupt
        return super().bind(part, seq_len, past_len)


def test_interrupted_profile_resumes_to_the_grid_of_an_uninterrupted_one(tiny, tmp_path):
    first = fresh(tiny, tmp_path, "interrupted")
    with pytest.raises(KeyboardInterrupt):
        profile_device(first, tmp_path / "a.json", threads=1, grid=tiny.grid, runner=Interrupted(first, 1, stop_at=4), progress=False)
    assert not (tmp_path / "a.json").exists()
    saved = json.loads((first / STATE_FILE).read_text())["parts"]
    assert list(saved) == ["overhead", "embedding", "layer_E64_R1", "layer_E64_R2"]

    resumed = profile_device(first, tmp_path / "a.json", threads=1, grid=tiny.grid, progress=False)
    whole = profile_device(fresh(tiny, tmp_path, "whole"), tmp_path / "b.json", threads=1, grid=tiny.grid, progress=False)

    # the parts timed before the interruption were kept, not timed again
    overhead = saved["overhead"]["decode"][0][0]
    assert resumed.overhead_ms == overhead
    assert resumed.layers[(64, 1.0)].decode.median_ms == tuple(max(0.0, m - overhead) for m, _, _ in saved["layer_E64_R1"]["decode"])
    # and the resumed profile covers exactly the grid of the uninterrupted one
    assert resumed.layers.keys() == whole.layers.keys() == {(e, r) for e in tiny.axes.widths for r in tiny.axes.ratios}
    assert resumed.projections.keys() == whole.projections.keys() == {(128, 64), (64, 128)}
    assert resumed.final_norms.keys() == whole.final_norms.keys()
    assert (resumed.decode_contexts, resumed.prefill_lengths) == (whole.decode_contexts, whole.prefill_lengths) == ((0, 32, 127), (8, 32))
    assert resumed.measurement == whole.measurement
    assert all(len(t.decode.median_ms) == 3 and len(t.prefill.median_ms) == 2 for t in resumed.layers.values())
    assert DeviceProfile.load(tmp_path / "a.json", backend="ort") == resumed


def test_resuming_with_other_settings_is_refused(tiny, tmp_path):
    workdir = fresh(tiny, tmp_path, "w")
    with pytest.raises(KeyboardInterrupt):
        profile_device(workdir, tmp_path / "p.json", threads=1, grid=tiny.grid, runner=Interrupted(workdir, 1, stop_at=1), progress=False)
    with pytest.raises(InputError, match="partial profile made with other settings"):
        profile_device(workdir, tmp_path / "p.json", threads=2, grid=tiny.grid, progress=False)


def test_the_profile_predicts_a_tiny_model_with_cold_timings(tiny, tmp_path):
    grid = replace(tiny.grid, measurement=replace(tiny.grid.measurement, flush_bytes=4 << 20))
    profile = profile_device(fresh(tiny, tmp_path, "w"), tmp_path / "p.json", threads=1, grid=grid, progress=False)
    assert profile.overhead_cold_ms is not None and profile.measurement.flush_bytes == 4 << 20
    parts = [*profile.layers.values(), *profile.projections.values(), profile.embedding, profile.head]
    assert all(len(t.decode_cold.median_ms) == len(t.decode.median_ms) for t in parts)
    model = LatencyModel(profile)
    arch = ArchSpec((Block(64, 1.0, 2), Block(128, 2.0, 1)), **tiny.model)
    assert profile.device.kind == "cpu" and profile.device.threads == 1 and profile.backend.name == "ort"
    terms = model.decode_terms(arch, 100)
    assert model.decode_ms(arch, 100) == pytest.approx(terms.warm + terms.penalty)  # uncalibrated: every part cold
    assert model.decode_ms(arch, 100) >= terms.warm >= profile.overhead_ms > 0
    assert model.prefill_ms(arch, 32) >= profile.overhead_ms > 0


@pytest.mark.slow
def test_cli_profile_quick_writes_a_profile(tiny, tmp_path, capsys):
    workdir = fresh(tiny, tmp_path, "w")
    argv = ["profile", "--quick", "--threads", "1", "--clock", "cpu", "--flush-mib", "4", "--calibration", "2", "--workdir", str(workdir), "--out", str(tmp_path / "p.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "layers:   4 (E, R)" in out
    profile = DeviceProfile.load(tmp_path / "p.json", backend="ort")
    assert profile.measurement.quick and profile.measurement.clock == "cpu" and profile.measurement.flush_bytes == 4 << 20
    assert profile.prefill_lengths == (16, 128)
    assert len(profile.calibration.archs) == 2 and profile.calibration.points == 2 * (len(profile.decode_contexts) + len(profile.prefill_lengths))
    assert len(list((workdir / "calibration").glob("arch_*/model.onnx"))) == 2


def test_grids_round_trip_through_json():
    assert Grid.from_json(QUICK.to_json()) == QUICK
    with pytest.raises(InputError, match="needs decode_contexts"):
        Grid.from_json({"decode_contexts": [0]})


def test_cpu_clock_needs_one_thread(tiny, tmp_path):
    with pytest.raises(InputError, match="use it with --threads 1, not 2"):
        profile_device(fresh(tiny, tmp_path, "w"), tmp_path / "p.json", threads=2, clock="cpu", progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["profile", "--backend", "tensorrt"], "TensorRT is not installed", marks=pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed")),
        (["profile", "--backend", "tensorrt", "--precision", "fp32"], "builds FP16 engines"),
        (["profile", "validate", "missing.json"], "device profile not found: missing.json"),
        (["profile", "--calibration", "-1"], "--calibration must be 0 or more"),
    ],
)
def test_cli_profile_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["profile", "p.json"], "invalid choice: 'p.json'"),
        (["profile", "validate"], "required: PROFILE"),
        (["profile", "--archs", "5"], "--archs is a flag of `merino-edge profile validate`"),
        (["profile", "--quick", "validate", "p.json"], "--quick: a flag of `merino-edge profile` alone"),
        (["profile", "validate", "p.json", "--quick"], "unrecognized arguments: --quick"),
    ],
)
def test_cli_profile_refuses_flags_of_the_other_command_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1
