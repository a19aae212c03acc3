"""The latency model's arithmetic on the hand-made profile (tests/search/data/tiny_profile.json)."""

import json
from pathlib import Path

import pytest

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block
from merino_edge.device_profile import DeviceProfile
from merino_edge.errors import InputError
from merino_edge.search.latency import LatencyModel

TINY = Path(__file__).parent / "data" / "tiny_profile.json"
RAW = json.loads(TINY.read_text())
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


def test_parts_are_additive_for_the_exact_solver(model):
    context = 700
    parts = model.breakdown(ARCH, context)
    assert sum(parts.values()) == pytest.approx(model.decode_ms(ARCH, context))
    assert parts["fixed"] == pytest.approx(model.fixed_ms(ARCH, context))
    deeper = ArchSpec((Block(256, 2.0, 3), *ARCH.blocks[1:]))
    assert model.decode_ms(deeper, context) - model.decode_ms(ARCH, context) == pytest.approx(model.layer_ms(256, 2.0, context))


def with_cold_timings() -> dict:
    """RAW with cold decode timings: every part twice its warm time, the call overhead 0.5 ms."""

    def cold(entry):
        return {**entry, "decode_cold": {k: [2 * v for v in vs] for k, vs in entry["decode"].items()}}

    data = {k: [cold(e) for e in RAW[k]] for k in ("layers", "projections", "final_norms")}
    return {**RAW, **data, "embedding": cold(RAW["embedding"]), "head": cold(RAW["head"]), "overhead_cold_ms": 0.5}


def test_a_decode_step_meets_every_part_cold():
    model = LatencyModel(DeviceProfile.from_json(with_cold_timings()))
    index, context = 2, RAW["decode_contexts"][2]
    fixed = 0.5 + 2 * (raw_fixed("decode", 0) - RAW["overhead_ms"])
    layers = sum(b.depth * 2 * raw_layer(b.width, b.ratio, "decode")[index] for b in ARCH.blocks)
    assert model.decode_ms(ARCH, context) == pytest.approx(fixed + layers, rel=1e-12)
    assert model.block_ms(ARCH.blocks[1], context) == pytest.approx(3 * model.layer_ms(512, 4.0, context))
    # prefill is compute-bound and uses the plain (warm) sums
    assert model.prefill_ms(ARCH, 128) == pytest.approx(LatencyModel(DeviceProfile.from_json(RAW)).prefill_ms(ARCH, 128))


def test_profile_round_trips_through_json():
    for data in (RAW, with_cold_timings()):
        assert DeviceProfile.from_json(data).to_json() == data
    profile = DeviceProfile.load(TINY)
    assert DeviceProfile.from_json(json.loads(json.dumps(profile.to_json()))) == profile
    assert profile.axes == TABLE5 and profile.missing(TABLE5) == []


def write(tmp_path, data) -> Path:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(data))
    return path


def test_wrong_schema_version_is_refused(tmp_path):
    with pytest.raises(InputError, match="schema_version 99 is not supported"):
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
