"""The latency model's arithmetic on the hand-made profile (tests/search/data/tiny_profile.json)."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from cache_profiles import calibrated, with_cold_timings

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block
from merino_edge.device_profile import DeviceProfile
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.search.latency import LatencyModel, Sample, fit_calibration, step_traffic_bytes
from merino_edge.search.space import SearchSpace

TINY = Path(__file__).parent / "data" / "tiny_profile.json"
RAW = json.loads(TINY.read_text())
CALIBRATION = {"archs": [], "miss_intercept": -1.6, "miss_slope": 0.38, "prefill_scales": [1.3, 1.1, 1.05], "decode_mape": 3.0, "prefill_mape": 1.5, "points": 24}
ARCH = ArchSpec((Block(256, 2.0, 2), Block(512, 4.0, 3), Block(768, 1.0, 1), Block(1024, 3.5, 4)))


def raw_layer(width, ratio, phase):
    (entry,) = [e for e in RAW["layers"] if e["width"] == width and e["ratio"] == ratio]
    return entry[phase]["median_ms"]


def raw_fixed(phase, index):
    """Overhead + embedding + projections + final norm + head of ARCH, from the JSON itself."""
    projections = {(e["in"], e["out"]): e for e in RAW["projections"]}
    norms = {e["width"]: e for e in RAW["final_norms"]}
    parts = [RAW["embedding"], RAW["head"], norms[1024]] + [projections[p] for p in [(768, 256), (256, 512), (512, 768), (768, 1024), (1024, 768)]]
    return RAW["overhead_ms"] + sum(p[phase]["median_ms"][index] for p in parts)


@pytest.fixture(scope="module")
def model():
    return LatencyModel.from_file(TINY, backend="ort")


@pytest.mark.parametrize("index", [0, 1, 2])
def test_decode_at_a_profiled_context_is_the_sum_of_the_parts(model, index):
    context = RAW["decode_contexts"][index]
    layers = sum(b.depth * raw_layer(b.width, b.ratio, "decode")[index] for b in ARCH.blocks)
    assert model.decode_ms(ARCH, context) == pytest.approx(raw_fixed("decode", 0) + layers, rel=1e-12)


def test_decode_interpolates_linearly_between_contexts_and_extends_past_the_last(model):
    c0, c1, c2 = RAW["decode_contexts"]
    mid = (c0 + c1) // 2
    assert model.decode_ms(ARCH, mid) == pytest.approx((model.decode_ms(ARCH, c0) + model.decode_ms(ARCH, c1)) / 2)
    slope = (model.decode_ms(ARCH, c2) - model.decode_ms(ARCH, c1)) / (c2 - c1)
    assert model.decode_ms(ARCH, c2 + 100) == pytest.approx(model.decode_ms(ARCH, c2) + 100 * slope)
    assert model.decode_ms(ARCH, c2) > model.decode_ms(ARCH, c1) > model.decode_ms(ARCH, c0)


def test_prefill_is_the_sum_of_the_parts_at_a_profiled_length(model):
    index = 1
    length = RAW["prefill_lengths"][index]
    layers = sum(b.depth * raw_layer(b.width, b.ratio, "prefill")[index] for b in ARCH.blocks)
    assert model.prefill_ms(ARCH, length) == pytest.approx(raw_fixed("prefill", index) + layers, rel=1e-12)
    with pytest.raises(InputError, match="prefill length"):
        model.prefill_ms(ARCH, 0)


def test_step_terms_are_additive_for_the_cost_tables(model):
    context = 700
    parts = model.breakdown(ARCH, context)
    assert sum(parts.values()) == pytest.approx(model.decode_ms(ARCH, context))
    deeper = ArchSpec((Block(256, 2.0, 3), *ARCH.blocks[1:]))
    more, base = model.decode_terms(deeper, context), model.decode_terms(ARCH, context)
    assert more.warm - base.warm == pytest.approx(model.layer_terms(256, 2.0, context)[0])
    assert more.traffic - base.traffic == step_traffic_bytes(deeper, context, 4) - step_traffic_bytes(ARCH, context, 4)


def test_traffic_is_the_weights_once_and_the_kv_cache_three_times():
    kv = 2 * (2 * 256 + 3 * 512 + 768 + 4 * 1024) * 4  # K and V of every layer execution, fp32, per token
    assert step_traffic_bytes(ARCH, 100, 4) == ARCH.params() * 4 + 3 * 100 * kv


def test_a_decode_step_meets_every_part_cold_without_calibration():
    model = LatencyModel(DeviceProfile.from_json(with_cold_timings(RAW)))
    index, context = 2, RAW["decode_contexts"][2]
    fixed = 0.5 + 2 * (raw_fixed("decode", 0) - RAW["overhead_ms"])
    layers = sum(b.depth * 2 * raw_layer(b.width, b.ratio, "decode")[index] for b in ARCH.blocks)
    assert model.decode_ms(ARCH, context) == pytest.approx(fixed + layers, rel=1e-12)
    assert not model.cache_aware and model.miss_fraction(1e9) == 1.0
    # prefill is compute-bound and uses the plain (warm) sums
    assert model.prefill_ms(ARCH, 128) == pytest.approx(LatencyModel(DeviceProfile.from_json(RAW)).prefill_ms(ARCH, 128))


def test_a_calibrated_step_pays_mu_of_the_cold_penalty():
    space = SearchSpace(TABLE5, blocks=4)
    profile = calibrated(RAW, space, context=512)
    model, cold = LatencyModel(profile), LatencyModel(replace(profile, calibration=None))
    c = profile.calibration
    terms = model.decode_terms(ARCH, 512)
    mu = c.miss_intercept + c.miss_slope * np.log(terms.traffic / 2**20)
    assert 0 < mu < 1 and model.cache_aware
    assert terms.penalty == pytest.approx(terms.warm - 2 * RAW["overhead_ms"] + 0.5)  # parts: cold is twice warm; overhead 0.5 cold
    assert model.decode_ms(ARCH, 512) == pytest.approx(terms.warm + mu * terms.penalty, rel=1e-12)
    assert model.decode_ms(ARCH, 512) < cold.decode_ms(ARCH, 512) == pytest.approx(terms.warm + terms.penalty)
    # clipped to [0, 1] outside the range
    assert model.miss_fraction(1.0) == 0.0 and model.miss_fraction(1e15) == 1.0
    assert model.prefill_ms(ARCH, 128) == pytest.approx(RAW["overhead_ms"] + 1.1 * cold.prefill_parts_ms(ARCH, 128))
    # between profiled lengths the scale is interpolated in ln(length): halfway between 128 and 1024 tokens is 362
    assert model.prefill_ms(ARCH, 362) == pytest.approx(RAW["overhead_ms"] + 1.075 * cold.prefill_parts_ms(ARCH, 362), rel=1e-3)


def test_fit_recovers_the_calibration_that_made_the_timings():
    profile = calibrated(RAW, SearchSpace(TABLE5, blocks=4), context=512, mu_range=(0.1, 0.7), prefill_scales=(1.4, 1.07, 1.1))
    truth = LatencyModel(profile)
    archs = SearchSpace(TABLE5, blocks=4).sample(np.random.default_rng(3), 8)
    archs = [SearchSpace(TABLE5, blocks=4).to_arch(g) for g in archs]
    samples = [Sample(a, "decode", c, truth.decode_ms(a, c)) for a in archs for c in (0, 512, 2047)]
    samples += [Sample(a, "prefill", s, truth.prefill_ms(a, s)) for a in archs for s in RAW["prefill_lengths"]]
    fit = fit_calibration(replace(profile, calibration=None), samples)
    c = profile.calibration
    assert fit.miss_intercept == pytest.approx(c.miss_intercept, rel=1e-6) and fit.miss_slope == pytest.approx(c.miss_slope, rel=1e-6)
    assert fit.prefill_scales == pytest.approx((1.4, 1.07, 1.1), rel=1e-9)
    assert fit.decode_mape < 1e-6 and fit.prefill_mape < 1e-6 and fit.points == 8 * (3 + 3)
    assert fit.archs == tuple(a.short() for a in archs)


def test_a_falling_share_is_not_fitted_as_a_cache():
    """Whole models that pay less of the penalty the more they move are noise: one constant share."""
    profile = DeviceProfile.from_json(with_cold_timings(RAW))
    model = LatencyModel(profile)
    small, big = ArchSpec((Block(64, 1.0, 1),) * 4), ArchSpec((Block(1024, 4.0, 4),) * 4)
    samples = []
    for arch, mu in ((small, 0.8), (big, 0.2)):
        t = model.decode_terms(arch, 100)
        samples += [Sample(arch, "decode", 100, t.warm + mu * t.penalty)]
        samples += [Sample(arch, "prefill", s, model.prefill_ms(arch, s)) for s in RAW["prefill_lengths"]]
    fit = fit_calibration(profile, samples)
    assert fit.miss_slope == 0.0 and 0.2 < fit.miss_intercept < 0.8
    assert not LatencyModel(replace(profile, calibration=fit)).cache_aware


def test_profile_round_trips_through_json():
    calibrated_raw = calibrated(RAW, SearchSpace(TABLE5, blocks=4), context=512).to_json()
    for data in (RAW, with_cold_timings(RAW), calibrated_raw):
        assert DeviceProfile.from_json(data).to_json() == data
    profile = DeviceProfile.load(TINY)
    assert DeviceProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    assert profile.axes == TABLE5 and profile.missing(TABLE5) == []


def write(tmp_path, data) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def test_wrong_schema_version_is_refused(tmp_path):
    with pytest.raises(IncompatibleError, match="schema_version 99 is not supported"):
        DeviceProfile.load(write(tmp_path, {**RAW, "schema_version": 99}))


def test_missing_layer_entries_are_refused_naming_them(tmp_path):
    layers = [e for e in RAW["layers"] if not (e["width"] == 512 and e["ratio"] == 2.5)]
    with pytest.raises(InputError, match=r"missing layer E=512 R=2.5"):
        DeviceProfile.load(write(tmp_path, {**RAW, "layers": layers}))


def test_a_wider_search_space_than_profiled_is_refused():
    wider = Axes(widths=(*TABLE5.widths, 1152), ratios=TABLE5.ratios, depths=TABLE5.depths)
    with pytest.raises(InputError, match=r"missing layer E=1152 R=1, .* and \d+ more"):
        DeviceProfile.load(TINY, axes=wider)


def test_another_backend_than_asked_is_refused():
    with pytest.raises(InputError, match="measured on backend 'ort', not 'tensorrt'"):
        LatencyModel.from_file(TINY, backend="tensorrt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in RAW.items() if k != "head"}), "missing field 'head'"),
        (json.dumps({**RAW, "decode_contexts": [512, 0]}), "increasing"),
        (json.dumps({**RAW, "overhead_ms": -1}), "overhead_ms must be a non-negative"),
        (json.dumps({**RAW, "calibration": {"archs": [], "miss_slope": 0.3}}), "malformed"),
        (json.dumps({**RAW, "calibration": {**CALIBRATION, "prefill_scales": [1.2, 0, 1.0]}}), "3 positive prefill_scales"),
        (json.dumps({**RAW, "calibration": {**CALIBRATION, "prefill_scales": [1.2]}}), "3 positive prefill_scales"),
        (json.dumps({**RAW, "calibration": {**CALIBRATION, "fudge": 1}}), "unknown field"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path, text, message):
    path = tmp_path / "profile.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        DeviceProfile.load(path)


def test_an_arch_with_another_vocabulary_is_refused(model):
    with pytest.raises(InputError, match="vocab_size 32000, the arch has 512"):
        model.decode_ms(ArchSpec((Block(64, 1.0, 1),), vocab_size=512), 0)
