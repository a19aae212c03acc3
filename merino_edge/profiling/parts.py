"""The parts of a MeRino model that `merino-edge profile` times, and their index file.

`profiling.export` exports one graph per part into a work directory and writes
`graphs.json`; `profiling.run` reads it on the board (this module is
torch-free).  Shapes are templates over three symbols: `s` the new tokens,
`c` the past (KV-cache) length and `t = c + s`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from merino_edge.arch import HEAD_DIM, MAX_POSITIONS, PROJ_DIM, TABLE5, VOCAB_SIZE, ArchSpec, Axes, Block
from merino_edge.device_profile import needed_projections
from merino_edge.fileio import check_schema, read_json

GRAPHS_SCHEMA_VERSION = 1
GRAPHS_FILE = "graphs.json"
# `profile validate`: each random architecture is a folder with these two files.
ARCH_FILE = "arch.json"
GRAPH_FILE = "model.onnx"


@dataclass(frozen=True)
class Part:
    """One micro-graph: what it computes (`kind`), its input and output shape templates and its parameters.

    Kinds: overhead, embedding, layer (`width` E, `ratio` R), projection
    (`in_dim` -> `out_dim`), final_norm (`width`), head.
    """

    name: str
    kind: str
    inputs: dict[str, list]
    outputs: dict[str, list]
    params: int
    width: int | None = None
    ratio: float | None = None
    in_dim: int | None = None
    out_dim: int | None = None

    @property
    def file(self) -> str:
        """The part's ONNX file in the work directory."""
        return f"{self.name}.onnx"

    def to_json(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "file": self.file, "inputs": self.inputs, "outputs": self.outputs, "params": self.params}
        for key, value in (("width", self.width), ("ratio", self.ratio), ("in", self.in_dim), ("out", self.out_dim)):
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: dict) -> Part:
        return cls(
            data["name"], data["kind"], data["inputs"], data["outputs"], int(data["params"]),
            width=data.get("width"), ratio=data.get("ratio"), in_dim=data.get("in"), out_dim=data.get("out"),
        )  # fmt: skip


@dataclass(frozen=True)
class MicroGraphs:
    """The index of a work directory's micro-graphs (`graphs.json`): the space, the model dims and every part."""

    precision: str
    axes: Axes
    model: dict[str, int]  # vocab_size, proj_dim, head_dim, max_positions
    parts: tuple[Part, ...]
    exporter: dict[str, str] = field(default_factory=dict)  # versions of what exported the graphs

    def to_json(self) -> dict:
        return {
            "schema_version": GRAPHS_SCHEMA_VERSION,
            "precision": self.precision,
            "space": self.axes.to_json(),
            "model": self.model,
            "exporter": self.exporter,
            "parts": [part.to_json() for part in self.parts],
        }

    @classmethod
    def from_json(cls, data: dict) -> MicroGraphs:
        return cls(
            data["precision"], Axes.from_json(data["space"]), dict(data["model"]), tuple(Part.from_json(p) for p in data["parts"]), dict(data.get("exporter", {}))
        )

    def of_kind(self, kind: str) -> list[Part]:
        return [part for part in self.parts if part.kind == kind]


def _layer_io(width: int, head_dim: int) -> tuple[dict, dict]:
    """Inputs and outputs of a layer graph: x, attn_bias, past K/V -> y, present K/V."""
    kv, present = [1, width // head_dim, "c", head_dim], [1, width // head_dim, "t", head_dim]
    inputs = {"x": [1, "s", width], "attn_bias": [1, 1, "s", "t"], "past_key": kv, "past_value": kv}
    outputs = {"y": [1, "s", width], "present_key": present, "present_value": present}
    return inputs, outputs


def micro_parts(axes: Axes = TABLE5, vocab_size: int = VOCAB_SIZE, proj_dim: int = PROJ_DIM, head_dim: int = HEAD_DIM, max_positions: int = MAX_POSITIONS) -> list[Part]:
    """Every part a model over `axes` is made of (one layer per (E, R)), with its input and output shape templates."""
    p = proj_dim
    bias = [1, 1, "s", "t"]
    parts = [
        Part("overhead", "overhead", {"x": [1, "s", p]}, {"y": [1, "s", p]}, 0),
        Part(
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
            parts.append(Part(f"layer_E{e}_R{r:g}", "layer", *_layer_io(e, head_dim), params, width=e, ratio=float(r)))
    for a, b in needed_projections(axes, p):
        parts.append(Part(f"proj_{a}_{b}", "projection", {"x": [1, "s", a]}, {"y": [1, "s", b]}, a * b, in_dim=a, out_dim=b))
    for e in axes.widths:
        parts.append(Part(f"final_norm_E{e}", "final_norm", {"x": [1, "s", e]}, {"y": [1, "s", e]}, 2 * e, width=e))
    parts.append(Part("head", "head", {"x": [1, "s", p]}, {"logits": [1, "s", vocab_size]}, p * vocab_size))
    return parts


def graphs_index(precision: str, axes: Axes = TABLE5, *, exporter: dict | None = None, **model) -> MicroGraphs:
    """The index of every part of `axes` (model: vocab_size, proj_dim, head_dim, max_positions)."""
    dims_ = {"vocab_size": VOCAB_SIZE, "proj_dim": PROJ_DIM, "head_dim": HEAD_DIM, "max_positions": MAX_POSITIONS, **model}
    return MicroGraphs(precision, axes, dims_, tuple(micro_parts(axes, **dims_)), exporter or {})


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


def read_graphs(workdir: str | Path) -> MicroGraphs:
    """The micro-graph index of a work directory made by `profiling.export.export_micro_graphs`."""
    path = Path(workdir) / GRAPHS_FILE
    data = read_json(path, "micro-graph index", missing=f"{path} not found: export the micro-graphs first (merino-edge profile does it where torch is installed)")
    check_schema(data, str(path), GRAPHS_SCHEMA_VERSION, fix="export the micro-graphs again")
    return MicroGraphs.from_json(data)
