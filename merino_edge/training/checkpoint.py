"""Training checkpoints: a `transformers` checkpoint directory plus `trainer_state/`.

`trainer_state/checkpoint.pt` holds everything a resumed run needs (model,
optimizer, scheduler, RNG states, data position, step); it is written to a
temporary file and renamed over the old one, so a run killed at any moment
leaves either the old or the new checkpoint, never half of one.  Beside it the
directory is a loadable `transformers` checkpoint (`config.json`,
`model.safetensors`, `generation_config.json`, `tokenizer.model`), each file
replaced atomically too.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from merino_edge.errors import InputError
from merino_edge.tokenizer import FILE_NAME as TOKENIZER_FILE

STATE_DIR = "trainer_state"
STATE_FILE = "checkpoint.pt"
FORMAT_VERSION = 1
FILE_MODE = 0o644  # temp files are created 0600; the results are ordinary files


def state_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / STATE_DIR / STATE_FILE


def has_checkpoint(out_dir: str | Path) -> bool:
    return state_path(out_dir).is_file()


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model_dir(model, tokenizer_path: Path, out_dir: Path) -> None:
    """Write the `transformers` files of `model` (and the tokenizer) into `out_dir`, file by file atomically."""
    from transformers.utils import logging as hf_logging

    out_dir.mkdir(parents=True, exist_ok=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Writing model shards" bar would interleave with ours
    try:
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".save-") as tmp:
            tmp = Path(tmp)
            model.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            if tokenizer_path.resolve() != (out_dir / TOKENIZER_FILE).resolve():
                shutil.copyfile(tokenizer_path, tmp / TOKENIZER_FILE)
            for item in tmp.iterdir():
                item.chmod(FILE_MODE)
                os.replace(item, out_dir / item.name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def save_state(out_dir: Path, state: dict) -> Path:
    """Write `trainer_state/checkpoint.pt` atomically (temp file, fsync, rename)."""
    path = state_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{STATE_FILE}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temporaries(out_dir: str | Path) -> None:
    """Temp files and dirs left by a run killed in the middle of a save."""
    out_dir = Path(out_dir)
    for stale in [*out_dir.glob(".save-*"), *(out_dir / STATE_DIR).glob(f".{STATE_FILE}.*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def load_state(out_dir: str | Path) -> dict:
    """The state saved by `save_state`; InputError when there is none or it is unreadable."""
    path = state_path(out_dir)
    if not path.is_file():
        raise InputError(f"train: nothing to resume: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise InputError(f"train: checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise InputError(f"train: checkpoint {path} has an unknown format; it cannot be resumed by this merino-edge")
    return state
