"""ONNX export of a MeRino model: one graph for the prompt and for every decode step.

Graph contract (what every runtime backend relies on); i is the layer execution 0 .. sum(depths) - 1
and heads_i = E_i / 64 of the block that execution belongs to:

    inputs   input_ids        int64  [batch, seq]
             position_ids     int64  [batch, seq]
             attention_mask   int64  [batch, total]      1 = real token, 0 = padding; total = past + seq
             logits_to_keep   int64  [keep]              columns of input_ids whose logits come out
             past.{i}.key     KV     [batch, heads_i, past, 64]   (past may be 0 for the prompt)
             past.{i}.value   KV     [batch, heads_i, past, 64]
    outputs  logits           float32 [batch, keep, vocab]
             present.{i}.key  KV     [batch, heads_i, total, 64]   (or [batch, heads_i, seq, 64]: see below)
             present.{i}.value KV    [batch, heads_i, total, 64]

`logits_to_keep` is transformers' tensor form of that argument: generation
asks for the last column only (a 2,000-token prompt would otherwise make a
[2000, vocab] float32 tensor, 256 MB at a 32k vocabulary, for one row of it),
scoring for all of them.  The graph gathers those columns of the last hidden
state before the head, so the head runs on them alone.

Two ways to hand back the cache.  The FP16 graph (TensorRT's, and ONNX Runtime
on a GPU) returns `present = Concat(past, new)`, which a runtime swaps with its
past buffer.  The FP32 graph is for CPUs, where that Concat rewrites the whole
cache every token (about as many bytes as the weights at 1,500 tokens of a
50M model): there `present.*` is only this step's K/V, [batch, heads_i, seq,
64] (its axis 2 is named "seq", not "total"), attention reads the past where
it lies and adds the new columns apart (`_AppendCache.attend`), and the
runtime writes the new columns into its cache itself.  A past of such a graph
may hold columns beyond the real ones; the attention mask hides them like
padding.  The int8/int4 graphs are made from this one (export/quantize.py),
with its attention replaced by ONNX Runtime's fused kernel over an int8 cache
that it writes in place (a third form: `present.*` is the past's own buffer).

KV is float32 in the FP32 graph and float16 in the FP16 graph, whose weights and
activations are float16 too; LayerNorm and softmax run in float32 there (explicit
Casts, from the model code; the LayerNorm scales and biases are stored as float32)
and the logits are Cast to float32.  The LM-head MatMul itself stays float16 (GPUs
accumulate it in float32): upcasting its [P, vocab] weight would double the
largest read of every decode step.

Weights go to one external data file `<graph name>.data` beside the graph.  Shared
block layers are stored once (every execution reads the same initializers) and so
is the tied embedding: it is kept once, as the head's [P, vocab] matrix, and the
token lookup gathers its columns.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`.  In torch
2.13 it still exists (deprecated), exports a small model in under a second, and
gives a flat graph (no If/Loop) whose shared weights are single initializers; the
dynamo exporter took seconds and kept one transposed copy of a shared weight per
execution.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from merino_edge.arch import ArchSpec
from merino_edge.bundle import APPEND_AXIS
from merino_edge.errors import InputError
from merino_edge.export.operators import check_operators
from merino_edge.model import MeRinoForCausalLM, MeRinoLayer
from merino_edge.model.modeling import attention_bias, attention_probs

MIN_OPSET = 17

__all__ = [
    "CausalLMGraph",
    "LayerGraph",
    "check_operators",
    "export_layer",
    "export_module",
    "export_onnx",
    "graph_names",
]


class _ExplicitCache:
    """The `cache.update(k, v, index)` interface over given past tensors; keeps the presents."""

    def __init__(self, pasts: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.pasts = list(pasts)
        self.presents: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(self.pasts)

    def update(self, key: torch.Tensor, value: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        past_key, past_value = self.pasts[index]
        present = torch.cat([past_key, key], dim=-2), torch.cat([past_value, value], dim=-2)
        self.presents[index] = present
        return present


class _AppendCache(_ExplicitCache):
    """Attention over the past and this step's K/V without concatenating them; the presents are the new K/V alone."""

    def attend(self, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias: torch.Tensor, index: int) -> torch.Tensor:
        past_key, past_value = self.pasts[index]
        self.presents[index] = key, value
        past = past_key.shape[-2]
        scores = torch.cat([q @ past_key.transpose(-2, -1), q @ key.transpose(-2, -1)], dim=-1)  # [b, heads, s, past+s]
        probs = attention_probs(scores, attn_bias, value.dtype)
        return probs[..., :past] @ past_value + probs[..., past:] @ value


class CausalLMGraph(nn.Module):
    """`MeRinoForCausalLM` with the flat signature of the graph contract above (`append_kv`: presents are the new K/V)."""

    def __init__(self, model: MeRinoForCausalLM, append_kv: bool = False):
        super().__init__()
        self.model = model
        self.append_kv = append_kv

    def forward(self, input_ids, position_ids, attention_mask, logits_to_keep, *past):
        cache = (_AppendCache if self.append_kv else _ExplicitCache)(zip(past[0::2], past[1::2], strict=True))
        hidden = self.model.model(input_ids, attention_mask, position_ids, cache, use_cache=True).last_hidden_state
        logits = self.model.lm_head(hidden.index_select(1, logits_to_keep)).float()
        return (logits, *[t for present in cache.presents for t in present])


class LayerGraph(nn.Module):
    """One `MeRinoLayer` with its KV cache as explicit tensors, to time a layer alone.

    (hidden [b, s, E], attention_mask int64 [b, past+s], past_key, past_value [b, heads, past, 64])
    -> (hidden [b, s, E], present_key, present_value [b, heads, past+s, 64])
    """

    def __init__(self, layer: MeRinoLayer):
        super().__init__()
        self.layer = layer

    def forward(self, hidden, attention_mask, past_key, past_value):
        cache = _ExplicitCache([(past_key, past_value)])
        out = self.layer(hidden, attention_bias(attention_mask, hidden.shape[1]), cache, 0)
        return (out, *cache.presents[0])


def graph_names(arch: ArchSpec) -> tuple[list[str], list[str]]:
    """Input and output names of the model graph, in order."""
    inputs = ["input_ids", "position_ids", "attention_mask", "logits_to_keep"]
    outputs = ["logits"]
    for i in range(arch.num_layer_executions):
        inputs += [f"past.{i}.key", f"past.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def export_module(
    module: nn.Module,
    args: tuple,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    out_path: str | Path,
    *,
    fp16: bool = False,
    opset: int = MIN_OPSET,
) -> Path:
    """Export any torch module with named, dynamic inputs/outputs the way the model graph is exported.

    `args` are example tensors (float ones are cast to float16 with `fp16`); the
    module is exported from a CPU copy in the graph's precision when it is
    elsewhere, so it is never changed.  The graph lands at `out_path` with its
    weights in `<name>.data` beside it and passes `onnx.checker` and the operator check.
    """
    return _export(module, args, input_names, output_names, dynamic_axes, out_path, fp16=fp16, opset=opset)


def export_layer(layer: MeRinoLayer, out_path: str | Path, *, fp16: bool = False, opset: int = MIN_OPSET) -> Path:
    """Export `LayerGraph(layer)`: inputs hidden, attention_mask, past_key, past_value; outputs hidden_out, present_key, present_value."""
    attn = layer.attn
    width = attn.num_heads * attn.head_dim
    past, seq = 2, 3
    args = (
        torch.randn(1, seq, width),
        torch.ones(1, past + seq, dtype=torch.long),
        torch.randn(1, attn.num_heads, past, attn.head_dim),
        torch.randn(1, attn.num_heads, past, attn.head_dim),
    )
    axes = {
        "hidden": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "past_key": {0: "batch", 2: "past"},
        "past_value": {0: "batch", 2: "past"},
        "hidden_out": {0: "batch", 1: "seq"},
        "present_key": {0: "batch", 2: "total"},
        "present_value": {0: "batch", 2: "total"},
    }
    inputs = ["hidden", "attention_mask", "past_key", "past_value"]
    outputs = ["hidden_out", "present_key", "present_value"]
    return _export(LayerGraph(layer), args, inputs, outputs, axes, out_path, fp16=fp16, opset=opset)


def export_onnx(model_or_ckpt: MeRinoForCausalLM | str | Path, out_path: str | Path, *, fp16: bool = False, append_kv: bool = False,
                opset: int = MIN_OPSET) -> Path:
    """Export a `MeRinoForCausalLM` (or a checkpoint directory) to the single graph of the contract above.

    `append_kv`: the CPU form, whose presents are this step's K/V only.
    """
    model = _load_model(model_or_ckpt)
    arch = model.config.to_arch()
    inputs, outputs = graph_names(arch)
    batch, seq, past = 2, 3, 2
    args = [
        torch.randint(0, arch.vocab_size, (batch, seq)),
        torch.arange(past, past + seq).expand(batch, seq).contiguous(),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.tensor([0, seq - 1]),
    ]
    for heads in arch.layer_heads():
        args += [torch.zeros(batch, heads, past, arch.head_dim) for _ in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "seq"}, "position_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"},
            "logits_to_keep": {0: "keep"}, "logits": {0: "batch", 1: "keep"}}
    axes.update({name: {0: "batch", 2: "past"} for name in inputs[4:]})
    axes.update({name: {0: "batch", 2: APPEND_AXIS if append_kv else "total"} for name in outputs[1:]})
    return _export(CausalLMGraph(model, append_kv), tuple(args), inputs, outputs, axes, out_path, fp16=fp16, opset=opset, tied_embedding=True)


def _export(module, args, input_names, output_names, dynamic_axes, out_path, *, fp16, opset, tied_embedding=False) -> Path:
    if opset < MIN_OPSET:
        raise InputError(f"opset {opset} is too old: the graph needs >= {MIN_OPSET} (native LayerNormalization)")
    if len(args) != len(input_names):
        raise InputError(f"export: {len(args)} example inputs but {len(input_names)} input names")
    out_path = Path(out_path)
    dtype = torch.float16 if fp16 else torch.float32
    if any(p.dtype != dtype or p.device.type != "cpu" for p in module.parameters()):
        module = copy.deepcopy(module).to(device="cpu", dtype=dtype)
    args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        raw = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            module,
            args,
            str(raw),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset,
            dynamo=False,
        )
        proto = onnx.load(str(raw))
    if tied_embedding:
        _store_embedding_once(proto.graph)
    _save(proto, out_path)
    onnx.checker.check_model(str(out_path), full_check=True)
    check_operators(out_path)
    return out_path


def _store_embedding_once(graph: onnx.GraphProto) -> None:
    """Drop the token embedding when the exporter also stored its transpose for the tied head.

    The token lookup then gathers columns of the head's [P, vocab] matrix and
    transposes the small [P, batch, seq] result.
    """
    inits = {t.name: t for t in graph.initializer}
    embed_name = next((n for n in inits if n.endswith("embed_tokens.weight")), None)
    if embed_name is None:
        return
    embed = numpy_helper.to_array(inits[embed_name])
    head = next(
        (t for t in graph.initializer if tuple(t.dims) == embed.shape[::-1] and np.array_equal(numpy_helper.to_array(t), embed.T)),
        None,
    )
    users = [(i, n) for i, n in enumerate(graph.node) if embed_name in n.input]
    if head is None or len(users) != 1 or users[0][1].op_type != "Gather":
        return
    index, gather = users[0]
    columns = gather.output[0] + "_columns"
    transpose = helper.make_node("Transpose", [columns], [gather.output[0]], name=gather.name + "_to_rows", perm=[1, 2, 0])
    gather.input[0] = head.name
    gather.output[0] = columns
    del gather.attribute[:]
    gather.attribute.append(helper.make_attribute("axis", 1))
    graph.node.insert(index + 1, transpose)
    graph.initializer.remove(inits[embed_name])


def _save(proto: onnx.ModelProto, out_path: Path) -> None:
    data_name = out_path.name + ".data"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    (out_path.parent / data_name).unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(proto, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True, location=data_name, size_threshold=0)


def _load_model(model_or_ckpt) -> MeRinoForCausalLM:
    if isinstance(model_or_ckpt, MeRinoForCausalLM):
        return model_or_ckpt
    if isinstance(model_or_ckpt, nn.Module):
        raise InputError(f"export: expected a MeRinoForCausalLM, got {type(model_or_ckpt).__name__}")
    path = Path(model_or_ckpt)
    config = path / "config.json"
    if not config.is_file():
        raise InputError(f"{path}: not a checkpoint directory (no config.json)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as exc:
        raise InputError(f"{config}: not valid JSON ({exc})") from None
    if model_type != "merino":
        raise InputError(f"{config}: model_type is {model_type!r}, not 'merino'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return MeRinoForCausalLM.from_pretrained(path, local_files_only=True)
