"""Tiny MeRino specs and models for the model, export and runtime tests (fast on 2 CPU cores)."""

import torch

from merino_edge.arch import ArchSpec, Block
from merino_edge.model import MeRinoConfig, MeRinoForCausalLM

ARCHS = {
    # two blocks of shared layers, projections P->64->128->P
    "shared": ArchSpec(blocks=(Block(64, 2.0, 2), Block(128, 1.5, 3)), vocab_size=256, proj_dim=96, max_positions=64),
    # three blocks, every layer its own weights, last width above P
    "unshared": ArchSpec(
        blocks=(Block(64, 1.0, 1), Block(128, 2.0, 2), Block(192, 1.5, 2)), vocab_size=320, proj_dim=128, max_positions=64, shared=False
    ),
    # width equal to P: no projection at all
    "no_projections": ArchSpec(blocks=(Block(128, 4.0, 2),), vocab_size=512, proj_dim=128, max_positions=32),
}


def tiny_model(arch: ArchSpec, seed: int = 0) -> MeRinoForCausalLM:
    """A model of `arch` in eval mode whose every weight (biases and LayerNorms too) is perturbed from its init."""
    torch.manual_seed(seed)
    model = MeRinoForCausalLM(MeRinoConfig.from_arch(arch)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model
