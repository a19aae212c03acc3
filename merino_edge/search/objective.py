"""The MeRino objective, Eq. 15: effectiveness-weighted subspace entropy.

    Z = a1 * sum_j L_j (1 - b L_j / log2 E_j)      * H_MHA(E_j)
      + a2 * sum_j L_j (1 - b L_j / log2 (R_j E_j)) * H_FFN(E_j, R_j)

with H_MHA(E) = 4 H(E, E) (Q, K, V, O) and H_FFN(E, R) = 2 H(E, R E) (both FFN
linears), a = (0.6, 0.4), b = 1/16.  The effectiveness term uses log base 2,
which reproduces the gamma column of the paper's Table 1 (gamma = b L / log2 E:
0.008 for L=1, E=256 and 0.25 for L=24, E=64).  Z is a sum of one term per
block, which is what lets the exact solver work block by block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from merino_edge.arch import ArchSpec, Block
from merino_edge.errors import InputError
from merino_edge.search.entropy import DEFAULT_EPS, entropy


@dataclass(frozen=True)
class BlockTerms:
    """One block's share of the objective, before and after the weights."""

    entropy_mha: float  # L * H_MHA(E): expressiveness
    entropy_ffn: float  # L * H_FFN(E, R)
    gamma_mha: float  # b L / log2 E: the effectiveness penalty
    gamma_ffn: float  # b L / log2 (R E)
    score_mha: float  # a1 (1 - gamma_mha) entropy_mha
    score_ffn: float  # a2 (1 - gamma_ffn) entropy_ffn

    @property
    def score(self) -> float:
        return self.score_mha + self.score_ffn

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class Objective:
    """Eq. 15 with its knobs: alpha = (a1, a2), beta and the entropy's eps."""

    alpha: tuple[float, float] = (0.6, 0.4)
    beta: float = 1 / 16
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        alpha = tuple(float(a) for a in self.alpha)
        if len(alpha) != 2 or not all(math.isfinite(a) and a >= 0 for a in alpha):
            raise InputError(f"objective: alpha must be two non-negative numbers, got {self.alpha!r}")
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(f"objective: beta must be a non-negative number, got {self.beta!r}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise InputError(f"objective: eps must be a positive number, got {self.eps!r}")
        object.__setattr__(self, "alpha", alpha)

    def block_terms(self, block: Block) -> BlockTerms:
        e, f, depth = block.width, block.ffn_dim, block.depth
        h_mha = depth * 4 * entropy(e, e, self.eps)
        h_ffn = depth * 2 * entropy(e, f, self.eps)
        g_mha = self.beta * depth / math.log2(e)
        g_ffn = self.beta * depth / math.log2(f)
        return BlockTerms(h_mha, h_ffn, g_mha, g_ffn, self.alpha[0] * (1 - g_mha) * h_mha, self.alpha[1] * (1 - g_ffn) * h_ffn)

    def block_score(self, width: int, ratio: float, depth: int) -> float:
        return self.block_terms(Block(width, ratio, depth)).score

    def breakdown(self, arch: ArchSpec) -> list[BlockTerms]:
        return [self.block_terms(b) for b in arch.blocks]

    def __call__(self, arch: ArchSpec) -> float:
        return sum(t.score for t in self.breakdown(arch))

    def to_json(self) -> dict:
        return {"alpha": list(self.alpha), "beta": self.beta, "eps": self.eps}
