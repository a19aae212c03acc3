"""The TensorRT profiler checked without TensorRT: its engines mirror the runtime's two profiles, and are tied to the host."""

import dataclasses
import json

import numpy as np
import pytest

from merino_edge.engine_record import CONTEXT, GENERATION, HostInfo
from merino_edge.errors import IncompatibleError
from merino_edge.profiling.parts import dims, read_graphs
from merino_edge.profiling.tensorrt import ENGINES_HOST, arena_bytes, check_engines_host, part_profiles, profile_for

NANO = HostInfo("10.3.0", "Orin", "8.7", l4t="36.4.0", jetpack="6.1", board="NVIDIA Jetson Orin Nano Developer Kit")


def test_a_layer_gets_the_context_and_generation_profiles_of_the_runtime_engine(tiny):
    graphs = read_graphs(tiny.graphs)
    (layer,) = [p for p in graphs.parts if p.name == "layer_E128_R2"]
    context, generation = part_profiles(layer, max_positions=128)
    assert (context.name, generation.name) == (CONTEXT, GENERATION)
    # the prompt: 1..128 tokens, no past
    assert (context["x"].min, context["x"].max) == ((1, 1, 128), (1, 128, 128))
    assert context["past_key"].max == (1, 2, 0, 64) and context["attn_bias"].max == (1, 1, 128, 128)
    # one token after a past of 1..127 (past + the new token never exceed max positions)
    assert (generation["past_key"].min, generation["past_key"].max) == ((1, 2, 1, 64), (1, 2, 127, 64))
    assert generation["x"].max == (1, 1, 128) and generation["attn_bias"].max == (1, 1, 1, 128)
    for profile in (context, generation):
        assert {r.name for r in profile.inputs} == set(layer.inputs)
        assert all(np.all(np.array(r.min) <= np.array(r.opt)) and np.all(np.array(r.opt) <= np.array(r.max)) for r in profile.inputs)


def test_grid_points_run_on_the_profile_the_runtime_uses():
    assert profile_for(seq_len=1, past_len=0) == CONTEXT  # the first token is a one-token prompt
    assert profile_for(seq_len=1, past_len=511) == GENERATION
    assert profile_for(seq_len=64, past_len=0) == CONTEXT


def test_the_arena_holds_the_largest_part_at_the_largest_shapes(tiny):
    graphs = read_graphs(tiny.graphs)
    p = graphs.model["max_positions"]
    for part in graphs.parts:
        needed = sum(8 * int(np.prod(dims(t, p, p - 1))) for t in (*part.inputs.values(), *part.outputs.values()))
        assert arena_bytes(graphs) >= needed


def test_engines_are_recorded_with_the_host_and_reused_only_there(tmp_path):
    engines = tmp_path / "engines"
    check_engines_host(engines, NANO)  # a fresh work dir: the host is recorded before any engine is built
    assert HostInfo.from_json(json.loads((engines / ENGINES_HOST).read_text())) == NANO
    (engines / "layer_E128_R2.engine").write_bytes(b"a plan")
    check_engines_host(engines, NANO)  # a resumed profile on the same board
    for other, says in [
        (dataclasses.replace(NANO, tensorrt_version="10.7.0"), "TensorRT 10.3.0 built it, this machine has 10.7.0"),  # after a JetPack upgrade
        (dataclasses.replace(NANO, board="NVIDIA Jetson AGX Orin Developer Kit"), "this machine is NVIDIA Jetson AGX Orin"),  # a copied work dir
    ]:
        with pytest.raises(IncompatibleError) as info:
            check_engines_host(engines, other)
        assert says in str(info.value) and str(info.value).endswith(f"delete {engines} to build them again on this machine")


def test_engines_without_a_host_record_are_refused(tmp_path):
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "head.engine").write_bytes(b"a plan from an older merino-edge")
    with pytest.raises(IncompatibleError, match="nothing records what built them"):
        check_engines_host(engines, NANO)
