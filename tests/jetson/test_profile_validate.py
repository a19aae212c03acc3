"""`profile validate`: random archs of the space, whole models timed like the parts, the error figures."""

import json
import shutil

import numpy as np
import pytest

from merino_edge.export.micro import export_validation_models
from merino_edge.jetson.profile import profile_device
from merino_edge.jetson.validate import random_archs, validate_profile
from merino_edge.search.latency import LatencyModel


def test_random_archs_are_distinct_members_of_the_space(tiny):
    archs = random_archs(12, tiny.axes, seed=3, **tiny.model)
    assert len({a.short() for a in archs}) == 12
    for arch in archs:
        arch.check_axes(tiny.axes)
        assert arch.widths == sorted(arch.widths) and len(arch.blocks) == 4 and arch.vocab_size == 256
    assert random_archs(5, tiny.axes, seed=3, **tiny.model) == archs[:5]


@pytest.mark.slow
def test_validation_times_whole_models_and_reports_their_errors(tiny, tmp_path):
    profile_path = tmp_path / "profile.json"
    profile = profile_device(shutil.copytree(tiny.graphs, tmp_path / "w"), profile_path, threads=1, grid=tiny.grid, progress=False)
    archs = random_archs(3, tiny.axes, seed=1, **tiny.model)
    folders = export_validation_models(archs, tmp_path / "models", progress=False)
    stamp = (folders[0] / "model.onnx").stat().st_mtime_ns
    assert export_validation_models(archs, tmp_path / "models", progress=False) == folders  # already there: kept
    assert (folders[0] / "model.onnx").stat().st_mtime_ns == stamp

    report = validate_profile(profile_path, folders, tmp_path / "val", decode_contexts=(50, 100), prefill_lengths=(16,), progress=False)
    latency = LatencyModel(profile)
    decode = [p for p in report.points if p.phase == "decode"]
    assert [(p.arch, p.tokens) for p in decode] == [(a.short(), c) for a in archs for c in (50, 100)]
    assert [p.predicted_ms for p in decode] == [latency.decode_ms(a, c) for a in archs for c in (50, 100)]
    assert all(p.measured_ms > 0 for p in report.points)
    errors = np.array([abs(p.predicted_ms - p.measured_ms) / p.measured_ms for p in decode])
    assert report.decode.count == 6 and report.decode.mape == pytest.approx(100 * errors.mean())
    assert report.decode.within_10 == pytest.approx(100 * (errors <= 0.1).mean())
    assert report.prefill.count == 3
    saved = json.loads((tmp_path / "val" / "validation.json").read_text())
    assert saved["decode"]["mape"] == pytest.approx(report.decode.mape) and len(saved["points"]) == 9
    assert (tmp_path / "val" / "validation.png").read_bytes()[:4] == b"\x89PNG"
    assert "MAPE" in report.summary()
