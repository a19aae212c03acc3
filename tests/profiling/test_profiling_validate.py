"""`profile validate`: random archs of the space, whole models timed like the parts, the error figures."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from merino_edge.bundle import Bundle
from merino_edge.profiling.export import export_validation_models
from merino_edge.profiling.parts import read_graphs
from merino_edge.profiling.run import STATE_FILE, profile_device
from merino_edge.profiling.validate import validate_profile
from merino_edge.profiling.whole_models import ROUNDS, WholeModel, calibration_archs, random_archs, time_models
from merino_edge.search.latency import LatencyModel, Sample, fit_calibration


def test_random_archs_are_distinct_members_of_the_space(tiny):
    archs = random_archs(12, tiny.axes, seed=3, **tiny.model)
    assert len({a.short() for a in archs}) == 12
    for arch in archs:
        arch.check_axes(tiny.axes)
        assert arch.widths == sorted(arch.widths) and len(arch.blocks) == 4 and arch.vocab_size == 256
    assert random_archs(5, tiny.axes, seed=3, **tiny.model) == archs[:5]
    others = random_archs(5, tiny.axes, seed=3, exclude={a.short() for a in archs[:2]}, **tiny.model)
    assert others == archs[2:7]


@pytest.mark.slow
def test_validation_times_whole_models_and_reports_their_errors(tiny, tmp_path):
    profile_path = tmp_path / "profile.json"
    profile = profile_device(shutil.copytree(tiny.graphs, tmp_path / "w"), profile_path, threads=1, grid=tiny.grid, progress=False)
    archs = random_archs(3, tiny.axes, seed=1, **tiny.model)
    models = export_validation_models(archs, tmp_path / "models", progress=False)
    assert [m.arch for m in models] == archs
    stamp = models[0].graph.stat().st_mtime_ns
    assert export_validation_models(archs, tmp_path / "models", progress=False) == models  # already there: kept
    assert models[0].graph.stat().st_mtime_ns == stamp

    report = validate_profile(profile_path, models, tmp_path / "val", decode_contexts=(50, 100), prefill_lengths=(16,), progress=False)
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


@pytest.mark.slow
def test_a_calibrated_profile_fits_whole_models_resumes_and_validate_leaves_them_out(tiny, tmp_path):
    grid = replace(tiny.grid, measurement=replace(tiny.grid.measurement, flush_bytes=4 << 20))
    archs = calibration_archs(read_graphs(tiny.graphs), 3)
    calibration = export_validation_models(archs, tmp_path / "calibration", progress=False)
    workdir, path = shutil.copytree(tiny.graphs, tmp_path / "w"), tmp_path / "profile.json"
    profile = profile_device(workdir, path, threads=1, grid=grid, calibration=calibration, progress=False)

    fit = profile.calibration
    assert fit.archs == tuple(a.short() for a in archs) and fit.points == 3 * (3 + 2)  # 3 contexts, 2 prompt lengths
    assert min(fit.prefill_scales) > 0 and len(fit.prefill_scales) == 2 and fit.miss_slope >= 0 and fit.decode_mape < 100
    # the fit is the least-squares one over the timings kept in the work dir
    saved = json.loads((workdir / STATE_FILE).read_text())["models"]
    assert all(len(saved[a.short()]) == ROUNDS for a in archs)
    samples = [
        Sample(a, phase, tokens, float(np.median([run[i][2] for run in saved[a.short()]])))
        for a in archs
        for i, (phase, tokens, _, _) in enumerate(saved[a.short()][0])
    ]
    assert fit_calibration(replace(profile, calibration=None), samples) == fit
    # run again: nothing is timed twice, so the same fit
    assert profile_device(workdir, path, threads=1, grid=grid, calibration=calibration, progress=False).calibration == fit

    # validate leaves out the architectures the fit saw
    held_out = random_archs(2, tiny.axes, seed=5, exclude=fit.archs, **tiny.model)
    models = export_validation_models([archs[0], *held_out], tmp_path / "models", progress=False)
    report = validate_profile(path, models, tmp_path / "val", decode_contexts=(50,), prefill_lengths=(16,), progress=False)
    assert {p.arch for p in report.points} == {a.short() for a in held_out}
    latency = LatencyModel(profile)
    assert [p.predicted_ms for p in report.points if p.phase == "prefill"] == [latency.prefill_ms(a, 16) for a in held_out]


@pytest.mark.slow
def test_models_are_timed_in_rounds_that_resume_and_keep_their_median(tiny, tmp_path):
    models = export_validation_models(random_archs(2, tiny.axes, seed=4, **tiny.model), tmp_path / "models", progress=False)
    how = tiny.grid.measurement
    record, updates = {}, []

    def interrupt_at_third():
        updates.append(1)
        if len(updates) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        time_models(models, 1, how, (10,), (8,), rounds=3, record=record, on_update=interrupt_at_third, progress=False)
    assert sorted(len(v) for v in record.values()) == [1, 2]  # round 0 of both, round 1 of the first
    kept = json.loads(json.dumps(record))
    timed = time_models(models, 1, how, (10,), (8,), rounds=3, record=record, progress=False)
    assert all(len(v) == 3 and v[: len(kept[k])] == kept[k] for k, v in record.items())  # nothing timed twice
    for arch, timings in timed:
        runs = record[arch.short()]
        assert [t[:2] for t in timings] == [("decode", 10), ("prefill", 8)]
        assert [t[2] for t in timings] == [float(np.median([run[i][2] for run in runs])) for i in range(2)]


def test_a_bundles_graphs_of_either_cache_form_are_timed(tiny, tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    models = [WholeModel(bundle.arch, bundle.onnx_path(p)) for p in ("fp32", "fp16")]  # the CPU graph appends, the fp16 one concatenates
    timed = time_models(models, 1, tiny.grid.measurement, (10,), (8,), rounds=1, progress=False)
    assert [[t[:2] for t in timings] for _, timings in timed] == [[("decode", 10), ("prefill", 8)]] * 2
    assert all(t[2] > 0 for _, timings in timed for t in timings)
