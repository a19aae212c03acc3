"""The MeRino architecture (`ArchSpec`) and its cost model.

An architecture is N blocks of (E, R, L): embedding width E, FFN ratio R and
depth L (Table 5 of the paper). All L layers of a block share one set of
weights when `shared` is true, but each layer execution keeps its own KV cache.
Token and position embeddings live at the projection dim P; linear projections
(no bias) map P->E_1, E_j->E_{j+1} and E_N->P wherever the widths differ, and
the LM head is tied to the token embedding.

Every layer is pre-LayerNorm:  x + MHA(LN(x)),  x + FFN(LN(x)), with biases on
Q, K, V, O and both FFN linears, ReLU in the FFN, and one final LayerNorm at
E_N before the output projection.  The PyTorch model in `merino_edge.model`
builds exactly this, and the tests check that its parameter count and
`torch.utils.flop_counter` FLOPs equal the numbers computed here.

numpy-free on purpose: this module is imported by every stage, on the board too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

from merino_edge.errors import InputError
from merino_edge.fileio import check_schema, read_json, write_json_atomic

SCHEMA_VERSION = 1

HEAD_DIM = 64
PROJ_DIM = 768
MAX_POSITIONS = 2048
VOCAB_SIZE = 32000
FLOPS_SEQ_LEN = 1024


@dataclass(frozen=True)
class Axes:
    """The choices each block may take; the default is Table 5 of the paper."""

    widths: tuple[int, ...] = (64, 128, 256, 384, 512, 640, 768, 896, 1024)
    ratios: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)
    depths: tuple[int, ...] = (1, 2, 3, 4)

    def to_json(self) -> dict:
        return {"widths": list(self.widths), "ratios": list(self.ratios), "depths": list(self.depths)}

    @classmethod
    def from_json(cls, data: dict) -> Axes:
        return cls(
            widths=tuple(int(e) for e in data["widths"]),
            ratios=tuple(float(r) for r in data["ratios"]),
            depths=tuple(int(d) for d in data["depths"]),
        )


TABLE5 = Axes()


@dataclass(frozen=True)
class Block:
    """One block: `depth` layers of width `width` and FFN ratio `ratio`."""

    width: int
    ratio: float
    depth: int

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @property
    def ffn_dim(self) -> int:
        return int(round(self.ratio * self.width))


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs (2 x MACs of every matmul) at batch 1 and one sequence length."""

    seq_len: int
    embedding: int  # projections P->E_1, between blocks, E_N->P
    head: int  # tied LM head, P->vocab
    attention_linear: int  # Q, K, V, O of every layer execution
    attention_scores: int  # QK^T and softmax(QK^T)V of every layer execution
    ffn: int
    per_block: tuple[int, ...] = field(default=())

    @property
    def blocks(self) -> int:
        return self.attention_linear + self.attention_scores + self.ffn

    @property
    def total(self) -> int:
        return self.embedding + self.head + self.blocks


@dataclass(frozen=True)
class ArchSpec:
    """A MeRino decoder: blocks of (E, R, L) plus the fixed embedding settings."""

    blocks: tuple[Block, ...]
    vocab_size: int = VOCAB_SIZE
    proj_dim: int = PROJ_DIM
    max_positions: int = MAX_POSITIONS
    head_dim: int = HEAD_DIM
    shared: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise InputError("arch: blocks: at least one block is needed")
        for name in ("vocab_size", "proj_dim", "max_positions", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"arch: {name}: must be a positive integer, got {value!r}")
        previous = 0
        for j, block in enumerate(self.blocks):
            where = f"arch: blocks[{j}]"
            if not isinstance(block.width, int) or block.width <= 0 or block.width % self.head_dim:
                raise InputError(f"{where}.width: {block.width!r} is not a positive multiple of the head dim {self.head_dim}")
            if block.width < previous:
                raise InputError(f"{where}.width: {block.width} is smaller than the previous block's {previous} (widths must not decrease)")
            if not isinstance(block.depth, int) or block.depth < 1:
                raise InputError(f"{where}.depth: {block.depth!r} must be an integer >= 1")
            if not block.ratio > 0 or abs(block.ratio * block.width - round(block.ratio * block.width)) > 1e-9:
                raise InputError(f"{where}.ratio: {block.ratio!r} times width {block.width} is not a whole FFN dim")
            previous = block.width

    # ------------------------------------------------------------------ checks

    def check_axes(self, axes: Axes = TABLE5) -> None:
        """Raise InputError naming the field if any block is outside `axes`."""
        for j, block in enumerate(self.blocks):
            if block.width not in axes.widths:
                raise InputError(f"arch: blocks[{j}].width: {block.width} is not in the search space {list(axes.widths)}")
            if not any(math.isclose(block.ratio, r) for r in axes.ratios):
                raise InputError(f"arch: blocks[{j}].ratio: {block.ratio} is not in the search space {list(axes.ratios)}")
            if block.depth not in axes.depths:
                raise InputError(f"arch: blocks[{j}].depth: {block.depth} is not in the search space {list(axes.depths)}")

    # ------------------------------------------------------------ structure

    @property
    def widths(self) -> list[int]:
        return [b.width for b in self.blocks]

    @property
    def num_layer_executions(self) -> int:
        return sum(b.depth for b in self.blocks)

    def layer_heads(self) -> list[int]:
        """Heads of every layer execution, in order: one KV cache entry each."""
        return [b.heads for b in self.blocks for _ in range(b.depth)]

    def projections(self) -> list[tuple[int, int]]:
        """(in, out) of every projection linear, in forward order."""
        dims = [self.proj_dim, *self.widths, self.proj_dim]
        return [(a, b) for a, b in pairwise(dims) if a != b]

    # ---------------------------------------------------------------- costs

    @staticmethod
    def layer_params(block: Block) -> int:
        """Parameters of one transformer layer of `block` (two LayerNorms included)."""
        e, f = block.width, block.ffn_dim
        attention = 4 * (e * e + e)
        ffn = e * f + f + f * e + e
        norms = 2 * 2 * e
        return attention + ffn + norms

    def embedding_params(self) -> int:
        """Token + position embeddings, projections and the final LayerNorm."""
        tokens = self.vocab_size * self.proj_dim
        positions = self.max_positions * self.proj_dim
        projections = sum(a * b for a, b in self.projections())
        final_norm = 2 * self.blocks[-1].width
        return tokens + positions + projections + final_norm

    def params(self) -> int:
        """Unique parameters: shared layer weights counted once per block."""
        copies = (lambda b: 1) if self.shared else (lambda b: b.depth)
        return self.embedding_params() + sum(copies(b) * self.layer_params(b) for b in self.blocks)

    def executed_params(self) -> int:
        """Parameters touched by one forward pass: every layer execution counted."""
        return self.embedding_params() + sum(b.depth * self.layer_params(b) for b in self.blocks)

    def non_embedding_params(self) -> int:
        """Unique decoder-layer parameters (LiteTransformerSearch's proxy)."""
        return self.params() - self.embedding_params()

    def flops(self, seq_len: int = FLOPS_SEQ_LEN) -> FlopsBreakdown:
        """Forward FLOPs at batch 1 over `seq_len` tokens (causal mask not discounted)."""
        s = seq_len
        per_block = []
        att_lin = att_scores = ffn = 0
        for b in self.blocks:
            e, f = b.width, b.ffn_dim
            lin = b.depth * 4 * 2 * s * e * e
            scores = b.depth * 2 * (2 * s * s * e)
            mlp = b.depth * 2 * 2 * s * e * f
            att_lin += lin
            att_scores += scores
            ffn += mlp
            per_block.append(lin + scores + mlp)
        embedding = sum(2 * s * a * b for a, b in self.projections())
        head = 2 * s * self.proj_dim * self.vocab_size
        return FlopsBreakdown(s, embedding, head, att_lin, att_scores, ffn, tuple(per_block))

    def kv_cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V of every layer execution for one token (fp16 by default)."""
        return sum(b.depth * 2 * b.width for b in self.blocks) * bytes_per_value

    def weight_bytes(self, bytes_per_value: int = 2) -> int:
        """Stored weights (unique params) at 4 (fp32) or 2 (fp16) bytes a value."""
        return self.params() * bytes_per_value

    def memory_bytes(self, context: int, bytes_per_value: int = 2) -> int:
        """Weights plus a full KV cache at `context` tokens, batch 1."""
        return self.weight_bytes(bytes_per_value) + context * self.kv_cache_bytes_per_token(bytes_per_value)

    # ----------------------------------------------------------------- text

    def short(self) -> str:
        """Compact form, e.g. `E256xR4xL2 | E512xR2.5xL3`."""
        return " | ".join(f"E{b.width}xR{b.ratio:g}xL{b.depth}" for b in self.blocks)

    # ----------------------------------------------------------------- JSON

    def to_json(self) -> dict:
        data = asdict(self)
        data["blocks"] = [{"width": b.width, "ratio": b.ratio, "depth": b.depth} for b in self.blocks]
        return {"schema_version": SCHEMA_VERSION, **data}

    @classmethod
    def from_json(cls, data: dict) -> ArchSpec:
        check_schema(data, "arch", SCHEMA_VERSION, required=False)
        if not isinstance(data.get("blocks"), list):
            raise InputError("arch: blocks: missing or not a list")
        blocks = []
        for j, raw in enumerate(data["blocks"]):
            try:
                blocks.append(Block(width=raw["width"], ratio=float(raw["ratio"]), depth=raw["depth"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(f"arch: blocks[{j}]: needs width, ratio and depth ({exc})") from None
        known = {"vocab_size", "proj_dim", "max_positions", "head_dim", "shared"}
        return cls(blocks=tuple(blocks), **{k: v for k, v in data.items() if k in known})


def save_arch(path: str | Path, arch: ArchSpec, search: dict | None = None) -> None:
    """Write `arch.json`: the spec plus the search record that chose it."""
    record = {"schema_version": SCHEMA_VERSION, "arch": arch.to_json(), "search": search or {}}
    write_json_atomic(path, record)


def load_arch(path: str | Path) -> ArchSpec:
    """Read an `arch.json` written by `save_arch` (or a bare ArchSpec JSON).

    Blocks outside Table 5 are accepted only when the file's search record
    names the wider axes it was searched over.
    """
    data = read_json(path, "arch file")
    if not isinstance(data, dict):
        raise InputError(f"arch file {path}: expected a JSON object")
    spec = ArchSpec.from_json(data.get("arch", data))
    axes = (data.get("search") or {}).get("axes")
    spec.check_axes(Axes.from_json(axes) if axes else TABLE5)
    return spec
