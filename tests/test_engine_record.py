"""Engine profiles from a bundle manifest, the build record, and the engine compatibility check (no TensorRT needed)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from merino_edge.arch import ArchSpec, Block
from merino_edge.bundle import MANIFEST, Bundle, Manifest, file_sha256
from merino_edge.engine_record import (
    CONTEXT,
    ENGINE_FILE,
    ENGINE_NAME,
    GENERATION,
    EngineRecord,
    HostInfo,
    check_compatible,
    manifest_profiles,
    profile_shapes,
)
from merino_edge.errors import IncompatibleError, InputError
from merino_edge.export.tensorrt import attach_timing_cache, parser_error_message
from merino_edge.fileio import write_json_atomic

ARCH = ArchSpec(blocks=(Block(64, 2.0, 2), Block(128, 1.5, 1)), vocab_size=512, proj_dim=96, max_positions=256)
AGX_ORIN = "NVIDIA Jetson AGX Orin Developer Kit"
ORIN = HostInfo("10.3.0", "Orin", "8.7", l4t="36.4.0", jetpack="6.1", board=AGX_ORIN)


def _manifest(**limits) -> Manifest:
    limits = {"max_context": 256, "max_batch": 4, "max_prompt": 64, **limits}
    return Manifest(arch=ARCH, graphs={}, files={}, special_tokens={"unk": 0, "bos": 1, "eos": 2, "pad": 3}, **limits)


def _record(**changes) -> EngineRecord:
    manifest = _manifest()
    record = EngineRecord(
        onnx_file="model.fp16.onnx",
        onnx_sha256="ab" * 32,
        host=ORIN,
        workspace_mib=512,
        max_batch=manifest.max_batch,
        max_prompt=manifest.max_prompt,
        max_context=manifest.max_context,
        profiles=manifest_profiles(manifest),
        build_seconds=41.5,
        built_at="2025-01-01T00:00:00+00:00",
        timing_cache="engines/tensorrt.timing.cache",
    )
    return dataclasses.replace(record, **changes)


# ------------------------------------------------------------------ profiles


def test_context_profile_takes_the_prompt_with_an_empty_cache():
    context, _ = manifest_profiles(_manifest())
    assert context.name == CONTEXT
    ids = context["input_ids"]
    assert (ids.min, ids.max) == ((1, 1), (4, 64))
    assert context["position_ids"] == dataclasses.replace(ids, name="position_ids")
    assert context["attention_mask"].max == (4, 64)  # past 0 + prompt
    past = context["past.0.key"]
    assert (past.min, past.opt, past.max) == ((1, 1, 0, 64), (1, 1, 0, 64), (4, 1, 0, 64))


def test_generation_profile_takes_one_token_after_up_to_a_full_cache():
    _, generation = manifest_profiles(_manifest())
    assert generation.name == GENERATION
    ids = generation["input_ids"]
    assert (ids.min, ids.opt, ids.max) == ((1, 1), (1, 1), (4, 1))
    past = generation["past.2.value"]  # third layer execution: the 128-wide block, 2 heads
    assert (past.min, past.max) == ((1, 2, 1, 64), (4, 2, 255, 64))
    assert generation["attention_mask"].max == (4, 256)  # past + the new token == max context
    assert generation["attention_mask"].min == (1, 2)


def test_profiles_cover_every_layer_execution_in_order():
    for profile in profile_shapes(ARCH, max_batch=1, max_prompt=8, max_context=16):
        names = [r.name for r in profile.inputs]
        assert names[:3] == ["input_ids", "position_ids", "attention_mask"]
        caches = [r for r in profile.inputs if r.name.startswith("past.")]
        assert [r.name for r in caches] == [f"past.{i}.{kv}" for i in range(3) for kv in ("key", "value")]
        assert [r.max[1] for r in caches[::2]] == ARCH.layer_heads() == [1, 1, 2]
        for r in profile.inputs:
            assert all(lo <= opt <= hi for lo, opt, hi in zip(r.min, r.opt, r.max, strict=True)), r


def test_max_batch_override_and_batch_one_opt():
    context, generation = manifest_profiles(_manifest(), max_batch=1)
    assert context["input_ids"].max[0] == generation["past.0.key"].max[0] == 1
    context, _ = manifest_profiles(_manifest(max_batch=8))
    assert context["input_ids"].opt[0] == 1 and context["input_ids"].max[0] == 8


@pytest.mark.parametrize(
    ("limits", "word"),
    [
        ({"max_prompt": 300}, "max_prompt 300 is larger than max_context"),
        ({"max_context": 512, "max_prompt": 8}, "max_context 512 is larger than the model.s 256 positions"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_context": 1, "max_prompt": 1}, "no room to generate"),
    ],
)
def test_impossible_limits_are_refused(limits, word):
    with pytest.raises(InputError, match=word):
        manifest_profiles(_manifest(**limits))


# -------------------------------------------------------------------- record


def test_record_round_trips_through_the_bundle_manifest(tmp_path):
    manifest = _manifest()
    (tmp_path / "tokenizer.model").write_bytes(b"a tokenizer")  # every bundle lists the tokenizer it loads
    manifest.files["tokenizer.model"] = file_sha256(tmp_path / "tokenizer.model")
    write_json_atomic(tmp_path / MANIFEST, manifest.to_json())
    (tmp_path / "engines").mkdir()
    (tmp_path / ENGINE_FILE).write_bytes(b"serialized plan")
    record = _record()
    Bundle.load(tmp_path).add_engine(ENGINE_FILE, record.to_json(), name=ENGINE_NAME)

    bundle = Bundle.load(tmp_path)
    assert EngineRecord.from_json(json.loads(json.dumps(bundle.engine_record))) == record
    assert bundle.engine_path(ENGINE_NAME) == tmp_path / ENGINE_FILE
    assert bundle.engine_record["tensorrt_version"] == "10.3.0" and bundle.engine_record["l4t"] == "36.4.0"
    assert bundle.engine_record["board"] == AGX_ORIN

    (tmp_path / ENGINE_FILE).write_bytes(b"serialized plam")  # one byte flipped
    with pytest.raises(InputError, match="damaged"):
        Bundle.load(tmp_path)


def test_record_profile_lookup_by_name():
    record = _record()
    assert record.profile_index(CONTEXT) == 0 and record.profile_index(GENERATION) == 1
    with pytest.raises(IncompatibleError, match="merino-edge build"):
        record.profile_index("prefill")


def test_record_from_another_format_or_malformed_is_refused():
    data = _record().to_json()
    with pytest.raises(IncompatibleError, match="schema_version 2"):
        EngineRecord.from_json({**data, "schema_version": 2})
    del data["onnx_sha256"]
    with pytest.raises(InputError, match="onnx_sha256"):
        EngineRecord.from_json(data)


# ------------------------------------------------------------- compatibility


def test_same_machine_same_graph_is_compatible():
    record = _record()
    check_compatible(record, HostInfo("10.3.0", "Orin", "8.7", l4t="36.4.0", jetpack="6.1", board=AGX_ORIN), record.onnx_sha256)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (dataclasses.replace(ORIN, tensorrt_version="10.7.0"), "TensorRT 10.3.0 built it, this machine has 10.7.0"),
        (dataclasses.replace(ORIN, gpu_name="NVIDIA GeForce RTX 4090", compute_capability="8.9"), "built for Orin (sm 8.7), this GPU is NVIDIA GeForce RTX 4090"),
        (dataclasses.replace(ORIN, compute_capability="7.2"), "this GPU is Orin (sm 7.2)"),
        (dataclasses.replace(ORIN, l4t="36.4.3", jetpack="6.2"), "built on L4T 36.4.0, this machine has L4T 36.4.3"),
        (dataclasses.replace(ORIN, l4t=None, jetpack=None, board=None), "this machine has L4T none (not a Jetson)"),
        # every Orin module reports sm 8.7 and may run the same L4T: only the board model tells them apart
        (dataclasses.replace(ORIN, board="NVIDIA Jetson Orin Nano Developer Kit"), f"built on {AGX_ORIN}, this machine is NVIDIA Jetson Orin Nano Developer Kit"),
    ],
)
def test_other_tensorrt_gpu_or_l4t_is_refused_with_a_rebuild_hint(host, expected):
    with pytest.raises(IncompatibleError) as info:
        check_compatible(_record(), host, bundle="my-bundle")
    message = str(info.value)
    assert expected in message
    assert message.endswith("run `merino-edge build my-bundle` again")
    assert "\n" not in message


def test_engine_from_an_older_graph_is_refused():
    with pytest.raises(IncompatibleError, match="model.fp16.onnx changed since the engine was built"):
        check_compatible(_record(), ORIN, "cd" * 32)


def test_every_difference_is_named_at_once():
    host = HostInfo("10.12.0", "NVIDIA H100", "9.0")
    with pytest.raises(IncompatibleError) as info:
        check_compatible(_record(), host)
    assert all(word in str(info.value) for word in ("TensorRT 10.3.0", "NVIDIA H100", "L4T 36.4.0", AGX_ORIN))


def test_a_record_from_before_board_models_is_refused_on_a_jetson():
    data = _record().to_json()
    del data["board"]
    old = EngineRecord.from_json(data)
    assert old.host.board is None
    with pytest.raises(IncompatibleError, match=f"built on an unrecorded board, this machine is {AGX_ORIN}"):
        check_compatible(old, ORIN)


class StandInBuilderConfig:
    """TensorRT's timing-cache contract on an IBuilderConfig, as its bindings document it and NVIDIA's samples check it.

    `create_timing_cache` returns None for bytes it cannot read (a damaged file,
    another TensorRT's format); `set_timing_cache` returns False for a cache
    from another GPU unless ignore_mismatch.  A stand-in, since no TensorRT runs here.
    """

    def __init__(self, gpu: str = "Orin") -> None:
        self.gpu, self.cache = gpu, None

    def create_timing_cache(self, serialized: bytes):
        if serialized == b"":
            return SimpleNamespace(gpu=self.gpu, data=b"")
        kind, _, gpu = bytes(serialized).partition(b":")
        return SimpleNamespace(gpu=gpu.decode(), data=serialized) if kind == b"trt-10.3-cache" else None

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        if cache.gpu != self.gpu and not ignore_mismatch:
            return False
        self.cache = cache
        return True


@pytest.mark.parametrize(
    ("serialized", "used"),
    [
        (b"trt-10.3-cache:Orin", True),
        (b"", False),  # no cache yet: a new one, no notice
        (b"trt-10.3-cache:NVIDIA H100", False),  # another GPU's
        (b"\x00garbage from an interrupted copy", False),  # unreadable: create_timing_cache gives None
    ],
)
def test_a_timing_cache_that_tensorrt_refuses_is_replaced_by_a_new_one(serialized, used):
    config = StandInBuilderConfig()
    assert attach_timing_cache(config, serialized) is used
    assert config.cache is not None and config.cache.data == (serialized if used else b"")


def test_parser_errors_name_every_node_and_operator():
    errors = [
        SimpleNamespace(node_name=lambda: "/blocks.0/attn/Softmax", node_operator=lambda: "Softmax", desc=lambda: "unsupported data type"),
        SimpleNamespace(node_name=lambda: "", node_operator=lambda: "", desc=lambda: "graph input has no shape"),
    ]
    message = parser_error_message("b/model.fp16.onnx", errors)
    assert message == (
        "TensorRT cannot parse b/model.fp16.onnx: node /blocks.0/attn/Softmax (Softmax): unsupported data type; node ? (?): graph input has no shape"
    )


def test_profiles_match_the_exported_fp16_graph_which_passes_the_operator_check(tiny_bundle):
    import onnx

    from merino_edge.export.operators import check_operators

    bundle = Bundle.load(tiny_bundle)
    path = bundle.onnx_path("fp16")
    check_operators(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim] for i in graph.input}
    dtypes = {t.name: t.type.tensor_type.elem_type for t in (*graph.input, *graph.output)}
    for profile in manifest_profiles(bundle.manifest):
        assert [r.name for r in profile.inputs] == list(dims)
        for r in profile.inputs:
            fixed = [(k, n) for k, n in enumerate(dims[r.name]) if n is not None]
            assert all(r.min[k] == r.max[k] == n for k, n in fixed), (r, dims[r.name])
    assert dtypes["past.0.key"] == dtypes["present.0.value"] == onnx.TensorProto.FLOAT16
    assert dtypes["logits"] == onnx.TensorProto.FLOAT and dtypes["input_ids"] == dtypes["attention_mask"] == onnx.TensorProto.INT64
