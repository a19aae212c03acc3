"""Fixtures shared by the whole test tree.

Session-scoped and built once under pytest's tmp dir:

- `tiny_tokenizer`: a SentencePiece model (vocab 512) trained on ~200 KB of the
  `pydoc_data` topics that ship with Python (see `local_text.py`).
- `tiny_checkpoint`: a random-init MeRino in the checkpoint layout; shared weights,
  two blocks of differing widths (64, 128), projection dim 96, 128 positions.
- `tiny_checkpoint_unshared`: the same kind with unshared weights and other widths.
- `tiny_bundle`: `tiny_checkpoint` exported with both an FP32 and an FP16 graph
  (max context 128, max batch 4).  Tests that damage a bundle copy it first.
- `tiny_bundle_int4`: a copy of `tiny_bundle` with an int4 graph added (its
  int8 cache calibrated and its perplexity measured on local text).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from local_text import training_texts
from shared_paths import SHARED

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_VOCAB = 512
TINY_CORPUS_CHARS = 200_000


def pytest_collection_modifyitems(config, items):
    """Tests marked `shared_data` skip, with one line, where ../shared is not beside the repo."""
    if SHARED.is_dir():
        return
    skip = pytest.mark.skip(reason=f"needs the full data in {SHARED} (not beside this checkout)")
    for item in items:
        if "shared_data" in item.keywords:
            item.add_marker(skip)


def make_checkpoint(out_dir: Path, tokenizer_path: Path, blocks, *, shared: bool, proj_dim: int, seed: int = 0) -> Path:
    """A random-init MeRino saved as a checkpoint dir (larger init than training's, for clear argmaxes)."""
    import torch

    from merino_edge.arch import ArchSpec, Block
    from merino_edge.model import MeRinoConfig, MeRinoForCausalLM
    from merino_edge.training.checkpoint import save_model_dir

    arch = ArchSpec(blocks=tuple(Block(*b) for b in blocks), vocab_size=TINY_VOCAB, proj_dim=proj_dim, max_positions=128, shared=shared)
    torch.manual_seed(seed)
    model = MeRinoForCausalLM(MeRinoConfig.from_arch(arch, initializer_range=0.1)).eval()
    save_model_dir(model, tokenizer_path, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory) -> Path:
    from merino_edge.tokenizer import train_tokenizer

    return train_tokenizer(training_texts(TINY_CORPUS_CHARS), tmp_path_factory.mktemp("tokenizer") / "tokenizer.model", vocab_size=TINY_VOCAB, threads=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt-shared"), tiny_tokenizer, [(64, 2.0, 2), (128, 1.5, 2)], shared=True, proj_dim=96)


@pytest.fixture(scope="session")
def tiny_checkpoint_unshared(tmp_path_factory, tiny_tokenizer) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt-unshared"), tiny_tokenizer, [(64, 1.5, 2), (128, 1.0, 1), (192, 1.0, 1)], shared=False, proj_dim=128, seed=1)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint) -> Path:
    from merino_edge.export.package import export_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export_bundle(tiny_checkpoint, out, fp32=True, fp16=True, max_context=128, max_batch=4, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_bundle_int4(tmp_path_factory, tiny_bundle, tiny_tokenizer) -> Path:
    import shutil

    import numpy as np

    from merino_edge.export.quantize import quantize_bundle
    from merino_edge.tokenizer import Tokenizer

    out = shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("bundle-int4") / "bundle")
    ids = Tokenizer(tiny_tokenizer).encode("\n\n".join(training_texts(40_000)))
    windows = np.array(ids[: 8 * 129], np.int64).reshape(8, 129)
    quantize_bundle(out, ["int4"], (windows, "local text"), progress=False)
    return out
