"""The block-wise search space (Table 5, Sec. 3.2) and the MUTATE step (Alg. 2).

An architecture is a genome: an int array of shape (N, 3) holding, per block,
the indices of its width, FFN ratio and depth in the axes.  Widths must not
decrease across blocks.  Populations are stacks of genomes, shape (n, N, 3),
so sampling and mutation work on whole populations at once.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from merino_edge.arch import MAX_POSITIONS, PROJ_DIM, TABLE5, VOCAB_SIZE, ArchSpec, Axes, Block
from merino_edge.errors import InputError

WIDTH, RATIO, DEPTH = 0, 1, 2


@dataclass(frozen=True)
class SearchSpace:
    """N blocks over `axes` with non-decreasing widths, and the model settings every candidate shares."""

    axes: Axes = TABLE5
    blocks: int = 4
    vocab_size: int = VOCAB_SIZE
    proj_dim: int = PROJ_DIM
    max_positions: int = MAX_POSITIONS

    def __post_init__(self) -> None:
        if not isinstance(self.blocks, int) or self.blocks < 1:
            raise InputError(f"search space: blocks must be an integer >= 1, got {self.blocks!r}")
        for name in ("widths", "ratios", "depths"):
            values = getattr(self.axes, name)
            if not values:
                raise InputError(f"search space: {name} is empty")
            if list(values) != sorted(set(values)):
                raise InputError(f"search space: {name} must be distinct and increasing, got {list(values)}")
        # Validates every width and (width, ratio) pair the way ArchSpec does (multiples of 64, whole FFN dims).
        for e, r in itertools.product(self.axes.widths, self.axes.ratios):
            self.make_arch((Block(e, r, self.axes.depths[0]),))

    @property
    def shape(self) -> tuple[int, int, int]:
        """Choices per block: (widths, ratios, depths)."""
        return (len(self.axes.widths), len(self.axes.ratios), len(self.axes.depths))

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        w, r, d = self.shape
        return math.comb(w + self.blocks - 1, self.blocks) * (r * d) ** self.blocks

    def width_tuples(self) -> np.ndarray:
        """Every non-decreasing tuple of width indices, shape (count, N), in lexicographic order."""
        w = self.shape[0]
        return np.array(list(itertools.combinations_with_replacement(range(w), self.blocks)), dtype=np.int64).reshape(-1, self.blocks)

    # ------------------------------------------------------ genomes <-> archs

    def make_arch(self, blocks: tuple[Block, ...]) -> ArchSpec:
        """An ArchSpec of these blocks with the space's vocabulary, projection dim and positions."""
        return ArchSpec(blocks=tuple(blocks), vocab_size=self.vocab_size, proj_dim=self.proj_dim, max_positions=self.max_positions)

    def to_arch(self, genome: np.ndarray) -> ArchSpec:
        a = self.axes
        return self.make_arch(tuple(Block(a.widths[w], a.ratios[r], a.depths[d]) for w, r, d in np.asarray(genome).tolist()))

    def from_arch(self, arch: ArchSpec) -> np.ndarray:
        if len(arch.blocks) != self.blocks:
            raise InputError(f"search space has {self.blocks} blocks, the arch has {len(arch.blocks)}")
        arch.check_axes(self.axes)
        a = self.axes
        return np.array(
            [[a.widths.index(b.width), min(range(len(a.ratios)), key=lambda i: abs(a.ratios[i] - b.ratio)), a.depths.index(b.depth)] for b in arch.blocks],
            dtype=np.int64,
        )

    def contains(self, genomes: np.ndarray) -> np.ndarray:
        """Per genome: every index within its axis and widths non-decreasing."""
        g = np.asarray(genomes).reshape(-1, self.blocks, 3)
        inside = ((g >= 0) & (g < np.array(self.shape))).all(axis=(1, 2))
        return inside & (np.diff(g[:, :, WIDTH], axis=1) >= 0).all(axis=1)

    # ------------------------------------------------------------- sampling

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` uniform random genomes: sorted random widths, independent ratios and depths."""
        w, r, d = self.shape
        g = np.empty((n, self.blocks, 3), dtype=np.int64)
        g[:, :, WIDTH] = np.sort(rng.integers(w, size=(n, self.blocks)), axis=1)
        g[:, :, RATIO] = rng.integers(r, size=(n, self.blocks))
        g[:, :, DEPTH] = rng.integers(d, size=(n, self.blocks))
        return g

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator, step: int = 2) -> np.ndarray:
        """Alg. 2 on every genome: pick one block, move its width, ratio and depth by up to `step` choices each.

        The width stays between the previous block's and the next block's, so
        the order is kept; ratio and depth stay inside their axes.
        """
        g = np.array(genomes, dtype=np.int64, copy=True).reshape(-1, self.blocks, 3)
        n = len(g)
        rows = np.arange(n)
        j = rng.integers(self.blocks, size=n)
        moves = rng.integers(-step, step + 1, size=(n, 3))
        w, r, d = self.shape
        widths = g[:, :, WIDTH]
        lo = np.where(j > 0, widths[rows, np.maximum(j - 1, 0)], 0)
        hi = np.where(j < self.blocks - 1, widths[rows, np.minimum(j + 1, self.blocks - 1)], w - 1)
        g[rows, j, WIDTH] = np.clip(g[rows, j, WIDTH] + moves[:, WIDTH], lo, hi)
        g[rows, j, RATIO] = np.clip(g[rows, j, RATIO] + moves[:, RATIO], 0, r - 1)
        g[rows, j, DEPTH] = np.clip(g[rows, j, DEPTH] + moves[:, DEPTH], 0, d - 1)
        return g
