"""Weight-only int8 / int4 graphs for ONNX Runtime on a CPU, made from the bundle's fp32 graph.

Decode of a small model reads every weight once per token, so on a CPU it runs
at the speed of memory; fewer bytes per weight is the one way left to go
faster.  ONNX Runtime's own `MatMulNBitsQuantizer` turns every MatMul with a
constant weight into a `com.microsoft.MatMulNBits` (block-wise symmetric
scales, `BLOCK_SIZE` weights per scale along the input dimension, like
llama.cpp's Q8_0 / Q4_0), activations stay fp32, and the kernel computes
with int8 activations per block (`ACCURACY_LEVEL` 4), the fastest path on
x86 and Arm CPUs.

Before that the exporter's `Identity` nodes between a shared weight and its
MatMuls are removed, so every execution of a shared layer reads the same
quantized initializer (stored once).  The tied LM head is quantized too, and
the token lookup then gathers the same quantized rows with
`GatherBlockQuantized` (only its small scale table is reshaped), so the
embedding is stored once, quantized.  The position table stays fp32 (one
row per token).

The KV cache of these graphs is float16 (`_half_cache`): the graph takes the
past in float16 and casts it to float32 where it reads it, and casts the new
columns to float16 before it hands them back; attention itself computes in
float32.  At 1,500 tokens of the 50M arch the cache is 180 MB in float32,
five times its int4 weights, so this halves the memory of a long request and
of every `--parallel` slot; the casts cost less time than the bytes they
save (ONNX Runtime has no float16 MatMul on x86 CPUs, which is why the cast
is there).  What all this costs in quality is measured at export
(`merino_edge.export.quality`, with half of each window read from the
cache), not assumed.

These graphs use contrib operators and so are for ONNX Runtime only; the
TensorRT graph (fp16) stays free of them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from merino_edge.bundle import GRAPH_FILES, MANIFEST, QUANTIZED, Bundle, file_sha256
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.export.quality import MAX_INCREASE, graph_perplexity
from merino_edge.fileio import write_json_atomic

BITS = {"int8": 8, "int4": 4}
# 32: llama.cpp's block; measured on the 50M arch: block 128 decodes no faster here, and 32 loses less perplexity.
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (per block), the fast CPU kernels

__all__ = ["BITS", "BLOCK_SIZE", "quantize_bundle", "quantize_graph", "quantized_graphs"]


def quantize_bundle(bundle_dir: str | Path, precisions: Sequence[str], held_out: tuple[np.ndarray, str], *, progress: bool = True) -> Bundle:
    """`merino-edge quantize`: add int8 / int4 graphs to an existing bundle (from its fp32 graph) and rewrite its manifest.

    `held_out`: token windows to measure them on and where they came from (`merino_edge.training.data.held_out_windows`).
    """
    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    if "fp32" not in manifest.graphs:
        raise InputError(f"bundle {bundle.path}: quantized graphs are made from the fp32 graph, and this bundle has none; export it again with fp32")
    graphs = quantized_graphs(bundle.path, manifest.graphs["fp32"], precisions, *held_out, max_context=bundle.max_context, progress=progress)
    for precision, entry in graphs.items():
        files = [entry["file"], entry["data_file"]]
        manifest.record_graph(precision, entry, {name: file_sha256(bundle.path / name) for name in files})
    write_json_atomic(bundle.path / MANIFEST, manifest.to_json())
    return Bundle.load(bundle.path)


def quantized_graphs(
    out_dir: Path, fp32: dict, precisions: Sequence[str], windows: np.ndarray, source: str, *, max_context: int, progress: bool = True
) -> dict[str, dict]:
    """Write the `precisions` graphs made from the bundle's fp32 graph `fp32` (its manifest entry) and measure them.

    Returns each one's manifest entry: files, how it was quantized and its
    held-out perplexity against fp32's on `windows` (from `source`; each cut to the bundle's context).
    """
    windows = windows[:, : max_context + 1]
    unknown = [p for p in precisions if p not in QUANTIZED]
    if unknown:
        raise InputError(f"quantize: {', '.join(unknown)} is not one of {', '.join(QUANTIZED)}")
    fp32_graph = out_dir / fp32["file"]
    steps = tqdm([None, *dict.fromkeys(precisions)], desc="quantize", unit="graph", disable=not progress, file=sys.stderr)
    graphs, reference = {}, None
    for precision in steps:
        steps.set_postfix_str(f"perplexity of {precision or 'fp32'}")
        if precision is None:
            reference = graph_perplexity(fp32_graph, windows)
            continue
        graph = quantize_graph(fp32_graph, out_dir / GRAPH_FILES[precision], precision)
        perplexity = graph_perplexity(graph, windows)
        graphs[precision] = {
            "file": graph.name,
            "data_file": graph.name + ".data",
            "opset": fp32["opset"],
            "io_dtype": {**fp32["io_dtype"], "kv": "float16"},
            "quantization": {
                "tool": "onnxruntime MatMulNBitsQuantizer (round to nearest)", "bits": BITS[precision], "block_size": BLOCK_SIZE,
                "symmetric": True, "accuracy_level": ACCURACY_LEVEL, "lm_head_and_embedding": "quantized (tied, stored once)",
                "position_embedding": "fp32",
            },
            "quality": {
                "perplexity": perplexity, "fp32_perplexity": reference, "increase": perplexity / reference - 1,
                "max_increase": MAX_INCREASE[precision], "tokens": int(windows[:, 1:].size), "data": source,
            },
        }  # fmt: skip
    return graphs


def quantize_graph(fp32_graph: str | Path, out_path: str | Path, precision: str, *, block_size: int = BLOCK_SIZE) -> Path:
    """Write the weight-only `precision` ("int8" or "int4") version of an fp32 model graph to `out_path` (+ `.data`)."""
    if precision not in BITS:
        raise InputError(f"quantize: precision {precision!r} is not one of {', '.join(BITS)}")
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer
    except ImportError:
        raise MissingDependencyError("quantizing needs onnxruntime: pip install onnxruntime") from None
    proto = onnx.load(str(fp32_graph))
    _inline_weight_identities(proto.graph)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=ACCURACY_LEVEL, bits=BITS[precision], op_types_to_quantize=("MatMul",)
    )
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    proto = quantizer.model.model
    _drop_duplicate_initializers(proto.graph)
    _gather_quantized_embedding(proto.graph, BITS[precision], block_size)
    _drop_unused_initializers(proto.graph)
    _half_cache(proto.graph)
    out_path = Path(out_path)
    data_name = out_path.name + ".data"
    (out_path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(proto, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)
    onnx.checker.check_model(str(out_path))
    return out_path


def _half_cache(graph: onnx.GraphProto) -> None:
    """Make the `past.*` inputs and `present.*` outputs float16, with a Cast to and from float32 at the graph's edge."""
    into, out_of = [], []
    for value in graph.input:
        if value.name.startswith("past."):
            wide = value.name + "_fp32"
            for node in graph.node:
                node.input[:] = [wide if name == value.name else name for name in node.input]
            into.append(helper.make_node("Cast", [value.name], [wide], name=wide, to=onnx.TensorProto.FLOAT))
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    for value in graph.output:
        if value.name.startswith("present."):
            wide = value.name + "_fp32"
            for node in graph.node:  # the new K/V is read inside the graph too (the append form)
                node.input[:] = [wide if name == value.name else name for name in node.input]
                node.output[:] = [wide if name == value.name else name for name in node.output]
            out_of.append(helper.make_node("Cast", [wide], [value.name], name=value.name + "_fp16", to=onnx.TensorProto.FLOAT16))
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    nodes = [*into, *graph.node, *out_of]  # in topological order, as the checker wants
    del graph.node[:]
    graph.node.extend(nodes)


def _inline_weight_identities(graph: onnx.GraphProto) -> None:
    """Let every node read an initializer directly where the exporter put an `Identity` in between (shared weights)."""
    initializers = {t.name for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers}
    outputs = {o.name for o in graph.output}
    alias = {k: v for k, v in alias.items() if k not in outputs}
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(kept)


def _drop_duplicate_initializers(graph: onnx.GraphProto) -> None:
    """The quantizer adds a shared weight's quantized tensors once per MatMul, under one name: keep one."""
    seen, unique = set(), []
    for tensor in graph.initializer:
        if tensor.name not in seen:
            seen.add(tensor.name)
            unique.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(unique)


def _gather_quantized_embedding(graph: onnx.GraphProto, bits: int, block_size: int) -> None:
    """Turn the token lookup into a `GatherBlockQuantized` of the quantized tied head.

    The fp32 graph gathers columns of the head's [P, vocab] matrix (`Gather`
    axis 1, then a `Transpose` to [batch, seq, P]).  The head's `MatMulNBits`
    holds that matrix as [vocab, blocks, bytes] rows with scales [vocab,
    blocks]: gathering rows of it gives the [batch, seq, blocks, block] token
    vectors, reshaped to [batch, seq, P].
    """
    inits = {t.name: t for t in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits and _axis(n) == 1), None)
    head = gather and next((n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1] == gather.input[0] + f"_Q{bits}"), None)
    if head is None:
        return
    rows = [n for n in graph.node if n.op_type == "Transpose" and list(n.input) == [gather.output[0]]]
    if len(rows) != 1:
        return
    transpose = rows[0]
    vocab, blocks = numpy_helper.to_array(inits[head.input[2]]).shape
    shape3, flat = head.input[2] + "_shape3", gather.name + "_flat_shape"
    scales3, blocked = head.input[2] + "_3d", gather.output[0] + "_blocks"
    replacement = [
        _constant(shape3, [vocab, blocks, 1]),
        _constant(flat, [0, 0, -1]),
        helper.make_node("Reshape", [head.input[2], shape3], [scales3], name=gather.name + "_scales"),
        helper.make_node(
            "GatherBlockQuantized", [head.input[1], gather.input[1], scales3], [blocked], name=gather.name + f"_Q{bits}",
            domain="com.microsoft", gather_axis=0, quantize_axis=2, block_size=block_size, bits=bits,
        ),
        helper.make_node("Reshape", [blocked, flat], [transpose.output[0]], name=gather.name + "_rows"),
    ]  # fmt: skip
    index = list(graph.node).index(gather)
    graph.node.remove(transpose)
    graph.node.remove(gather)
    for offset, node in enumerate(replacement):
        graph.node.insert(index + offset, node)


def _constant(name: str, values: list[int]) -> onnx.NodeProto:
    """A shape as a `Constant` node (shape inputs must be inline, not in the external data file)."""
    return helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(values, np.int64), name))


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
