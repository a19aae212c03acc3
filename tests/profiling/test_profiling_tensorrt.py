"""The TensorRT profiler's shapes, checked without TensorRT: its engines mirror the runtime's two profiles."""

import numpy as np

from merino_edge.engine_record import CONTEXT, GENERATION
from merino_edge.profiling.parts import dims, read_graphs
from merino_edge.profiling.tensorrt import arena_bytes, part_profiles, profile_for


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
