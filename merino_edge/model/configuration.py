"""`MeRinoConfig`: the `transformers` config of a MeRino decoder.

The config is the single source of truth for the model; it holds the blocks of
an `ArchSpec` as three parallel lists (widths, FFN ratios, depths) so that
`config.json` stays plain JSON, and converts to and from `ArchSpec`.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from merino_edge.arch import HEAD_DIM, MAX_POSITIONS, PROJ_DIM, VOCAB_SIZE, ArchSpec, Block
from merino_edge.errors import InputError

# A GPT-2-small-sized default (one shared block of 12 executions); real models come from `from_arch`.
_DEFAULT_BLOCK = Block(width=768, ratio=4.0, depth=12)


class MeRinoConfig(PretrainedConfig):
    """Blocks of (width, ratio, depth) plus the fixed embedding settings of `ArchSpec`.

    `num_hidden_layers` is derived: it counts layer executions (the sum of the
    depths), which is also the number of KV-cache layers.
    """

    model_type = "merino"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]  # the name from transformers 5.24 on, and before

    block_widths: list[int] | None = None
    block_ratios: list[float] | None = None
    block_depths: list[int] | None = None
    shared_weights: bool = True
    vocab_size: int = VOCAB_SIZE
    proj_dim: int = PROJ_DIM
    max_position_embeddings: int = MAX_POSITIONS
    head_dim: int = HEAD_DIM
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 3
    num_hidden_layers: int | None = None

    def __post_init__(self, **kwargs):
        if self.block_widths is None:
            self.block_widths = [_DEFAULT_BLOCK.width]
            self.block_ratios = [_DEFAULT_BLOCK.ratio]
            self.block_depths = [_DEFAULT_BLOCK.depth]
        self.block_widths = [int(e) for e in self.block_widths]
        self.block_ratios = [float(r) for r in self.block_ratios]
        self.block_depths = [int(d) for d in self.block_depths]
        arch = self.to_arch()  # validates: InputError naming the bad field
        self.num_hidden_layers = arch.num_layer_executions
        super().__post_init__(**kwargs)

    @classmethod
    def from_arch(cls, arch: ArchSpec, **kwargs) -> MeRinoConfig:
        """The config of `arch`; `kwargs` set the other fields (eps, token ids, ...)."""
        return cls(
            block_widths=[b.width for b in arch.blocks],
            block_ratios=[b.ratio for b in arch.blocks],
            block_depths=[b.depth for b in arch.blocks],
            shared_weights=arch.shared,
            vocab_size=arch.vocab_size,
            proj_dim=arch.proj_dim,
            max_position_embeddings=arch.max_positions,
            head_dim=arch.head_dim,
            **kwargs,
        )

    def to_arch(self) -> ArchSpec:
        lengths = {len(self.block_widths), len(self.block_ratios), len(self.block_depths)}
        if len(lengths) != 1:
            raise InputError("config: block_widths, block_ratios and block_depths must have the same length")
        blocks = tuple(Block(e, r, d) for e, r, d in zip(self.block_widths, self.block_ratios, self.block_depths, strict=True))
        return ArchSpec(
            blocks=blocks,
            vocab_size=self.vocab_size,
            proj_dim=self.proj_dim,
            max_positions=self.max_position_embeddings,
            head_dim=self.head_dim,
            shared=self.shared_weights,
        )
