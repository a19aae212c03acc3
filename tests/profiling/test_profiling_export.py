"""The micro-graphs `merino-edge profile` times (profiling.export): shapes, parameters, dynamic axes; the torch runners."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from merino_edge.errors import InputError
from merino_edge.profiling.export import TorchRunner, export_micro_graphs
from merino_edge.profiling.parts import dims, read_graphs
from merino_edge.profiling.run import profile_device


def test_every_part_runs_at_any_length_and_past_with_the_indexed_shapes(tiny):
    graphs = read_graphs(tiny.graphs)
    kinds = [p.kind for p in graphs.parts]
    assert kinds.count("layer") == 4 and kinds.count("projection") == 2 and kinds.count("final_norm") == 2
    rng = np.random.default_rng(0)
    for part in graphs.parts:
        session = ort.InferenceSession(str(tiny.graphs / part.file), providers=["CPUExecutionProvider"])
        for seq_len, past_len in [(1, 0), (1, 17), (5, 0)]:
            feeds = {}
            for arg in session.get_inputs():
                shape = dims(part.inputs[arg.name], seq_len, past_len)
                feeds[arg.name] = (
                    np.ones(shape, np.int64) if "int64" in arg.type else rng.standard_normal(shape).astype(np.float32)
                )
            if "input_ids" in feeds:
                feeds["input_ids"] = np.zeros_like(feeds["input_ids"])
                feeds["position_ids"] = np.arange(past_len, past_len + seq_len)[None]
            outputs = session.run(None, feeds)
            expected = [dims(part.outputs[o.name], seq_len, past_len) for o in session.get_outputs()]
            assert [list(o.shape) for o in outputs] == expected, part.name


def test_exporting_again_keeps_the_graphs_and_refuses_another_space(tiny, tmp_path):
    index = json.loads((tiny.graphs / "graphs.json").read_text())
    stamp = (tiny.graphs / "head.onnx").stat().st_mtime_ns
    export_micro_graphs(tiny.graphs, axes=tiny.axes, progress=False, **tiny.model)
    assert (tiny.graphs / "head.onnx").stat().st_mtime_ns == stamp
    assert json.loads((tiny.graphs / "graphs.json").read_text()) == index
    with pytest.raises(InputError, match="another precision, space or model"):
        export_micro_graphs(tiny.graphs, axes=tiny.axes, progress=False, **{**tiny.model, "vocab_size": 512})


def test_torch_runners_profile_the_same_parts(tiny, tmp_path):
    runner = TorchRunner("fp32", "cpu", threads=1, axes=tiny.axes, **tiny.model)
    profile = profile_device(tmp_path / "w", tmp_path / "p.json", threads=1, grid=tiny.grid, runner=runner, progress=False)
    assert profile.backend.name == "torch" and profile.backend.provider == "cpu" and profile.device.kind == "cpu"
    assert set(profile.layers) == {(e, r) for e in tiny.axes.widths for r in tiny.axes.ratios}
    assert all(t.decode.median_ms[-1] > 0 for t in profile.layers.values())
