"""The parts of a MeRino model that `merino-edge profile` times, and their index file.

`profiling.export` exports one graph per part into a work directory and writes
`graphs.json`; `profiling.run` reads it on the board (this module is
torch-free).  Shapes are templates over three symbols: `s` the new tokens,
`c` the past (KV-cache) length and `t = c + s`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from merino_edge.arch import HEAD_DIM, MAX_POSITIONS, PROJ_DIM, TABLE5, VOCAB_SIZE, ArchSpec, Axes, Block
from merino_edge.device_profile import needed_projections
from merino_edge.errors import IncompatibleError
from merino_edge.fileio import read_json

GRAPHS_SCHEMA_VERSION = 1
GRAPHS_FILE = "graphs.json"
# `profile validate`: each random architecture is a folder with these two files.
ARCH_FILE = "arch.json"
GRAPH_FILE = "model.onnx"


def _part(name: str, kind: str, inputs: dict, outputs: dict, params: int, **keys) -> dict:
    return {"name": name, "kind": kind, "file": f"{name}.onnx", "inputs": inputs, "outputs": outputs, "params": params, **keys}


def _layer_io(width: int, head_dim: int) -> tuple[dict, dict]:
    """Inputs and outputs of a layer graph: x, attn_bias, past K/V -> y, present K/V."""
    kv, present = [1, width // head_dim, "c", head_dim], [1, width // head_dim, "t", head_dim]
    inputs = {"x": [1, "s", width], "attn_bias": [1, 1, "s", "t"], "past_key": kv, "past_value": kv}
    outputs = {"y": [1, "s", width], "present_key": present, "present_value": present}
    return inputs, outputs


def micro_parts(axes: Axes = TABLE5, vocab_size: int = VOCAB_SIZE, proj_dim: int = PROJ_DIM, head_dim: int = HEAD_DIM, max_positions: int = MAX_POSITIONS) -> list[dict]:
    """Every part a model over `axes` is made of, with its input and output shape templates.

    Kinds: overhead, embedding, layer (one per (E, R)), projection, final_norm, head.
    """
    p = proj_dim
    bias = [1, 1, "s", "t"]
    parts = [
        _part("overhead", "overhead", {"x": [1, "s", p]}, {"y": [1, "s", p]}, 0),
        _part(
            "embedding",
            "embedding",
            {"input_ids": [1, "s"], "position_ids": [1, "s"], "attention_mask": [1, "t"]},
            {"hidden": [1, "s", p], "attn_bias": bias},
            (vocab_size + max_positions) * p,
        ),
    ]
    for e in axes.widths:
        for r in axes.ratios:
            params = ArchSpec.layer_params(Block(e, r, 1))
            parts.append(_part(f"layer_E{e}_R{r:g}", "layer", *_layer_io(e, head_dim), params, width=e, ratio=float(r)))
    for a, b in needed_projections(axes, p):
        parts.append(_part(f"proj_{a}_{b}", "projection", {"x": [1, "s", a]}, {"y": [1, "s", b]}, a * b, **{"in": a, "out": b}))
    for e in axes.widths:
        parts.append(_part(f"final_norm_E{e}", "final_norm", {"x": [1, "s", e]}, {"y": [1, "s", e]}, 2 * e, width=e))
    parts.append(_part("head", "head", {"x": [1, "s", p]}, {"logits": [1, "s", vocab_size]}, p * vocab_size))
    return parts


def graphs_index(precision: str, axes: Axes = TABLE5, *, exporter: dict | None = None, **model) -> dict:
    """The graphs.json content for every part of `axes` (model: vocab_size, proj_dim, head_dim, max_positions)."""
    dims_ = {"vocab_size": VOCAB_SIZE, "proj_dim": PROJ_DIM, "head_dim": HEAD_DIM, "max_positions": MAX_POSITIONS, **model}
    return {
        "schema_version": GRAPHS_SCHEMA_VERSION,
        "precision": precision,
        "space": axes.to_json(),
        "model": dims_,
        "exporter": exporter or {},
        "parts": micro_parts(axes, **dims_),
    }


def dims(template: list, seq_len: int, past_len: int) -> list[int]:
    """A shape template of graphs.json ('s', 'c', 't' symbols) at one grid point."""
    sizes = {"s": seq_len, "c": past_len, "t": past_len + seq_len}
    return [sizes[d] if isinstance(d, str) else int(d) for d in template]


def example_input(name: str, shape: list[int], dtype, vocab_size: int, past_len: int, rng: np.random.Generator) -> np.ndarray:
    """A plausible value for a graph input: token ids, positions, an all-ones mask or small floats."""
    if name == "input_ids":
        return rng.integers(0, vocab_size, size=shape, dtype=np.int64)
    if name == "position_ids":
        return np.broadcast_to(np.arange(past_len, past_len + shape[-1], dtype=np.int64), shape).copy()
    if name == "attention_mask":
        return np.ones(shape, np.int64)
    if np.issubdtype(dtype, np.integer):
        return np.zeros(shape, dtype)
    return (0.1 * rng.standard_normal(shape)).astype(dtype)


def read_graphs(workdir: str | Path) -> dict:
    """The micro-graph index of a work directory made by `profiling.export.export_micro_graphs`."""
    path = Path(workdir) / GRAPHS_FILE
    data = read_json(path, "micro-graph index", missing=f"{path} not found: export the micro-graphs first (merino-edge profile does it where torch is installed)")
    if data.get("schema_version") != GRAPHS_SCHEMA_VERSION:
        raise IncompatibleError(f"{path}: schema_version {data.get('schema_version')!r}, this merino-edge reads {GRAPHS_SCHEMA_VERSION}; export again")
    return data
