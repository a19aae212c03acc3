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

Attention becomes ONNX Runtime's fused `com.microsoft.GroupQueryAttention`
(`_fused_attention`), one node per layer execution, with the past and the
present bound to one buffer: the kernel reads the cache where it lies and
writes the new columns into it, so a decode step neither rewrites nor casts
the cache (the fp32 graph's `present` columns are written by the runtime;
export/onnx.py).  The cache is int8 with one static scale per channel
(`PER_CHANNEL`, per layer execution, head and dimension): the absolute maximum
of that channel's keys or values over calibration text (`cache_scales`),
divided by 127; a value beyond it saturates.  At 1,500 tokens of the 50M arch
the cache is 180 MB in float32, five times its int4 weights; int8 makes it a
quarter of that, and the kernel reads it without a float copy (on a 2-core
AMD EPYC VM, 16 layers of 16 heads at 1,500 tokens: 4.5-5.3 ms a step,
against 6-10 ms for a float32 cache; the casts and MatMuls of a float16 cache
cast to float32, which these graphs had before, took 22 ms of a step on a VM
with half its memory bandwidth).  What all this costs in quality is measured
at export (`merino_edge.export.quality`, with half of each window read from
the cache), not assumed.

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

from merino_edge.bundle import GRAPH_FILES, MANIFEST, QUANTIZED, SHARED_AXIS, Bundle, file_sha256
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.export.quality import MAX_INCREASE, graph_perplexity, graph_session
from merino_edge.fileio import write_json_atomic

BITS = {"int8": 8, "int4": 4}
# 32: llama.cpp's block; measured on the 50M arch: block 128 decodes no faster here, and 32 loses less perplexity.
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # MatMulNBits computes with int8 activations (per block), the fast CPU kernels
CACHE_LEVELS = 127  # int8 cache: a channel's calibrated absolute maximum maps to +-127

__all__ = ["BITS", "BLOCK_SIZE", "cache_scales", "quantize_bundle", "quantize_graph", "quantized_graphs"]


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
    held-out perplexity against fp32's on `windows` (from `source`; each cut to
    the bundle's context).  The first quarter of the windows calibrates the
    int8 cache and the rest measure perplexity (all of them do both when there is only one).
    """
    windows = windows[:, : max_context + 1]
    calibration = windows[: max(1, len(windows) // 4)]
    measured = windows[len(calibration) :] if len(windows) > 1 else windows
    unknown = [p for p in precisions if p not in QUANTIZED]
    if unknown:
        raise InputError(f"quantize: {', '.join(unknown)} is not one of {', '.join(QUANTIZED)}")
    fp32_graph = out_dir / fp32["file"]
    steps = tqdm([None, *dict.fromkeys(precisions)], desc="quantize", unit="graph", disable=not progress, file=sys.stderr)
    graphs, reference, scales = {}, None, None
    for precision in steps:
        steps.set_postfix_str(f"perplexity of {precision or 'fp32'}")
        if precision is None:
            reference = graph_perplexity(fp32_graph, measured)
            scales = cache_scales(fp32_graph, calibration, max_context)
            continue
        graph = quantize_graph(fp32_graph, out_dir / GRAPH_FILES[precision], precision, scales)
        perplexity = graph_perplexity(graph, measured)
        graphs[precision] = {
            "file": graph.name,
            "data_file": graph.name + ".data",
            "opset": fp32["opset"],
            "io_dtype": {**fp32["io_dtype"], "kv": "int8"},
            "quantization": {
                "tool": "onnxruntime MatMulNBitsQuantizer (round to nearest)", "bits": BITS[precision], "block_size": BLOCK_SIZE,
                "symmetric": True, "accuracy_level": ACCURACY_LEVEL, "lm_head_and_embedding": "quantized (tied, stored once)",
                "position_embedding": "fp32",
                "kv_cache": {"dtype": "int8", "scales": "static, per channel", "calibration_tokens": int(calibration[:, 1:].size)},
            },
            "quality": {
                "perplexity": perplexity, "fp32_perplexity": reference, "increase": perplexity / reference - 1,
                "max_increase": MAX_INCREASE[precision], "tokens": int(measured[:, 1:].size), "data": source,
            },
        }  # fmt: skip
    return graphs


def quantize_graph(fp32_graph: str | Path, out_path: str | Path, precision: str, scales: dict[str, np.ndarray], *, block_size: int = BLOCK_SIZE) -> Path:
    """Write the weight-only `precision` ("int8" or "int4") version of an fp32 model graph to `out_path` (+ `.data`).

    `scales`: the int8 cache's, per `past.*` input ([1, heads, 1, 64] each, `cache_scales`).
    """
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
    _fused_attention(proto.graph, scales)
    _drop_dead_nodes(proto.graph)
    _drop_unused_initializers(proto.graph)
    out_path = Path(out_path)
    data_name = out_path.name + ".data"
    (out_path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(proto, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)
    onnx.checker.check_model(str(out_path))
    return out_path


def cache_scales(fp32_graph: str | Path, windows: np.ndarray, max_context: int, *, batch: int = 4) -> dict[str, np.ndarray]:
    """Per `past.*` input, the int8 cache's per-channel scales: each channel's absolute maximum over `windows`, / 127.

    The windows are shorter than the context, so they are run at positions
    spread over all of it (window j of n starts at j/(n-1) of the way): keys
    and values at late positions reach further than the first window's
    (measured on a tiny model: up to 2x in some channels), and would saturate.
    """
    session = graph_session(fp32_graph)
    pasts = [i for i in session.get_inputs() if i.name.startswith("past.")]
    presents = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    peaks = {i.name: np.zeros((1, i.shape[1], 1, i.shape[3]), np.float32) for i in pasts}
    s = windows.shape[1] - 1
    starts = np.linspace(0, max(0, max_context - s), len(windows)).round().astype(np.int64)
    for first in range(0, len(windows), batch):
        ids = windows[first : first + batch, :-1]
        b = len(ids)
        feeds = {"input_ids": ids, "position_ids": starts[first : first + b, None] + np.arange(s), "attention_mask": np.ones((b, s), np.int64),
                 "logits_to_keep": np.arange(1)}  # fmt: skip
        feeds.update({i.name: np.zeros((b, i.shape[1], 0, i.shape[3]), np.float32) for i in pasts})
        for past, present in zip(pasts, session.run(presents, feeds), strict=True):  # with an empty past: this window's K/V
            np.maximum(peaks[past.name], np.abs(present).max(axis=(0, 2), keepdims=True), out=peaks[past.name])
    return {name: np.maximum(peak, 1e-6) / CACHE_LEVELS for name, peak in peaks.items()}


def _fused_attention(graph: onnx.GraphProto, scales: dict[str, np.ndarray]) -> None:
    """Replace each layer execution's attention (export/onnx.py's append form) with one `GroupQueryAttention` over an int8 cache.

    Per execution i the fp32 graph computes q, k, v = Reshape -> Transpose of
    the projections (q then scaled by 1/8), hands k and v out as
    `present.{i}.*`, multiplies q with `past.{i}.key` and k, adds the causal and
    padding bias, and after the softmax its Add of two MatMuls goes back to
    [batch, seq, E] through Transpose -> Reshape.  The fused node takes the
    projections, the two pasts and the same bias (it applies the causal mask
    itself, and 1/sqrt(64) is its default scale), and gives that last Reshape's
    output; the old nodes are left for `_drop_dead_nodes`.
    """
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def refuse(name: str) -> InputError:
        return InputError(f"quantize: the fp32 graph's attention around {name!r} is not the append form this merino-edge exports; export it again")

    def reader(name: str, op: str) -> onnx.NodeProto:
        """The one node of type `op` that reads `name`."""
        nodes = [n for n in consumers.get(name, []) if n.op_type == op]
        if len(nodes) != 1:
            raise refuse(name)
        return nodes[0]

    def walk(name: str, ops: Sequence[str], down: bool = False) -> str:
        """The tensor reached from `name` through nodes of types `ops` (their first input upwards, their only consumer downwards)."""
        for op in ops:
            nodes = consumers.get(name, []) if down else [producer.get(name)]
            if len(nodes) != 1 or nodes[0] is None or nodes[0].op_type != op:
                raise refuse(name)
            name = nodes[0].output[0] if down else nodes[0].input[0]
        return name

    seqlens_k, total, query_seqlens = _sequence_lengths(graph)
    for i in range(sum(v.name.startswith("past.") for v in graph.input) // 2):
        past_key, past_value, present_key, present_value = f"past.{i}.key", f"past.{i}.value", f"present.{i}.key", f"present.{i}.value"
        scores = reader(reader(past_key, "Transpose").output[0], "MatMul")  # q @ past_key^T
        query = walk(walk(scores.input[0], ["Mul"]), ["Transpose", "Reshape"])
        key, value = (walk(name, ["Transpose", "Reshape"]) for name in (present_key, present_value))
        mixed = walk(reader(past_value, "MatMul").output[0], ["Add"], down=True)
        output = walk(mixed, ["Transpose", "Reshape"], down=True)
        node, before = scores, None
        while node.op_type != "Add":  # the scores pass Concat (and Cast) on to the Add of the bias
            before = node.output[0]
            node = consumers[before][0]
        bias = next(name for name in node.input if name != before)
        heads = int(scales[past_key].shape[1])
        for name in (past_key, past_value):
            graph.initializer.append(numpy_helper.from_array(scales[name].astype(np.float32), f"{name}_scale"))
        graph.node.remove(producer[present_key])
        graph.node.remove(producer[present_value])
        index = list(graph.node).index(producer[output])  # after everything the fused node reads, before what reads it
        graph.node.remove(producer[output])
        graph.node.insert(index, helper.make_node(
            "GroupQueryAttention",
            [query, key, value, past_key, past_value, seqlens_k, total, "", "", "", bias, "", f"{past_key}_scale", f"{past_value}_scale",
             "", "", query_seqlens],
            [output, present_key, present_value], name=f"attention.{i}", domain="com.microsoft",
            num_heads=heads, kv_num_heads=heads, k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8,
        ))  # fmt: skip
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past.", "present.")):
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
            if value.name.startswith("present."):
                value.type.tensor_type.shape.dim[2].dim_param = SHARED_AXIS


def _sequence_lengths(graph: onnx.GraphProto) -> tuple[str, str, str]:
    """Add the fused attention's `seqlens_k` ([batch] int32: total - 1), `total_sequence_length` (int32) and `query_seqlens` ([batch]: seq).

    Every row has the same lengths (padding is the bias's to hide); without
    `query_seqlens` ONNX Runtime takes more than one new token against a past for batch 1 only.
    """
    int32 = onnx.TensorProto.INT32
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_batch"], name="ids_batch", start=0, end=1),
        helper.make_node("Shape", ["input_ids"], ["ids_columns"], name="ids_columns", start=1, end=2),
        helper.make_node("Shape", ["attention_mask"], ["mask_columns"], name="mask_columns", start=1, end=2),
        helper.make_node("Cast", ["ids_columns"], ["ids_columns_int32"], name="ids_columns_int32", to=int32),
        helper.make_node("Cast", ["mask_columns"], ["mask_columns_int32"], name="mask_columns_int32", to=int32),
        helper.make_node("Squeeze", ["mask_columns_int32"], ["total_sequence_length"], name="total_sequence_length"),
        helper.make_node("Sub", ["mask_columns_int32", "one_int32"], ["last_column"], name="last_column"),
        helper.make_node("Expand", ["last_column", "ids_batch"], ["seqlens_k"], name="seqlens_k"),
        helper.make_node("Expand", ["ids_columns_int32", "ids_batch"], ["query_seqlens"], name="query_seqlens"),
    ]
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int32), "one_int32"))
    for offset, node in enumerate(nodes):
        graph.node.insert(offset, node)
    return "seqlens_k", "total_sequence_length", "query_seqlens"


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove the nodes none of whose outputs reach a graph output."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


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
