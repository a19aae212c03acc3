"""`merino-edge export`: a checkpoint directory into a bundle (the export side: torch, onnx).

The bundle format itself (manifest, loading, verification) is in
`merino_edge.bundle`, which stays torch-free so the board's runtime
can read bundles; this module writes them.  The manifest is written last
(atomically), so an interrupted export never looks like a bundle.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from merino_edge import __version__
from merino_edge.bundle import (
    DEFAULT_MAX_BATCH,
    GRAPH_FILES,
    MANIFEST,
    TOKENIZER_FILE,
    Bundle,
    ChatTemplate,
    Manifest,
    file_sha256,
)
from merino_edge.errors import InputError
from merino_edge.export.onnx import export_onnx  # checks the operators too
from merino_edge.export.quantize import quantized_graphs
from merino_edge.fileio import write_json_atomic
from merino_edge.model import MeRinoConfig
from merino_edge.tokenizer import Tokenizer


def _versions(*packages: str) -> dict:
    """Installed versions, read from package metadata (no import needed)."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _check_checkpoint(ckpt: Path) -> None:
    if not ckpt.is_dir():
        raise InputError(f"checkpoint {ckpt}: not a directory")
    missing = [n for n in ("config.json", TOKENIZER_FILE) if not (ckpt / n).is_file()]
    if not any(ckpt.glob("*.safetensors")) and not (ckpt / "pytorch_model.bin").is_file():
        missing.append("model.safetensors")
    if missing:
        raise InputError(f"checkpoint {ckpt}: missing {', '.join(missing)}")


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"--out {out}: directory is not empty (remove it or pass --force)")
        if not (out / MANIFEST).is_file():
            raise InputError(f"--out {out}: not empty and not a bundle; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def export_bundle(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    fp32: bool = True,
    fp16: bool = False,
    quantize: Sequence[str] = (),
    held_out: tuple[np.ndarray, str] | None = None,
    max_context: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_prompt: int | None = None,
    chat_template: ChatTemplate | None = None,
    opset: int = 17,
    overwrite: bool = False,
    progress: bool = True,
) -> Bundle:
    """Export a checkpoint directory to a bundle: ONNX graph(s), tokenizer, manifest.

    `max_context` defaults to the arch's max positions; `max_prompt` to `max_context`.
    `quantize`: "int8" and/or "int4" graphs made from the fp32 one, their
    perplexity measured on `held_out` (token windows and where they came
    from, `merino_edge.training.data.held_out_windows`; see `merino_edge.export.quality`).
    """
    ckpt, out = Path(ckpt_dir), Path(out_dir)
    precisions = [p for p, wanted in (("fp32", fp32), ("fp16", fp16)) if wanted]
    if not precisions:
        raise InputError("export: nothing to export (neither fp32 nor fp16 asked for)")
    if quantize and not fp32:
        raise InputError("export: --quantize makes its graphs from the fp32 graph; drop --no-fp32")
    if quantize and held_out is None:
        raise InputError("export: --quantize needs held-out tokens to measure the quantized graphs on")
    _check_checkpoint(ckpt)
    arch = MeRinoConfig.from_pretrained(str(ckpt)).to_arch()
    max_context = arch.max_positions if max_context is None else max_context
    if not 1 <= max_context <= arch.max_positions:
        raise InputError(f"--max-context {max_context}: must be between 1 and the model's {arch.max_positions} positions")
    max_prompt = max_context if max_prompt is None else max_prompt
    if not 1 <= max_prompt <= max_context:
        raise InputError(f"--max-prompt {max_prompt}: must be between 1 and the max context {max_context}")
    if max_batch < 1:
        raise InputError(f"--max-batch {max_batch}: must be at least 1")
    tokenizer = Tokenizer(ckpt / TOKENIZER_FILE)
    if tokenizer.vocab_size > arch.vocab_size:
        raise InputError(f"checkpoint {ckpt}: tokenizer has {tokenizer.vocab_size} pieces but the model only {arch.vocab_size}")

    _prepare_out_dir(out, overwrite)
    shutil.copyfile(ckpt / TOKENIZER_FILE, out / TOKENIZER_FILE)
    graphs = {}
    steps = tqdm(precisions, desc="export", unit="graph", disable=not progress, file=sys.stderr)
    for precision in steps:
        steps.set_postfix_str(precision)
        onnx_file = out / GRAPH_FILES[precision]
        export_onnx(str(ckpt), onnx_file, fp16=precision == "fp16", append_kv=precision != "fp16", opset=opset)
        data_file = onnx_file.with_name(onnx_file.name + ".data")  # export_onnx's external data file
        graphs[precision] = {
            "file": onnx_file.name,
            "data_file": data_file.name if data_file.is_file() else None,
            "opset": opset,
            "io_dtype": {"kv": "float16" if precision == "fp16" else "float32", "logits": "float32"},
        }
    if quantize:
        graphs.update(quantized_graphs(out, graphs["fp32"], quantize, *held_out, max_context=max_context, progress=progress))
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    hashes = {name: file_sha256(out / name) for name in tqdm(files, desc="sha256", unit="file", disable=not progress, file=sys.stderr)}
    manifest = Manifest(
        arch=arch,
        graphs=graphs,
        files=hashes,
        max_context=max_context,
        max_batch=max_batch,
        max_prompt=max_prompt,
        special_tokens={"unk": tokenizer.unk_id, "bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id},
        tokenizer={"file": TOKENIZER_FILE, "vocab_size": tokenizer.vocab_size},
        chat_template=chat_template or ChatTemplate(),
        exporter={"merino_edge": __version__, **_versions("torch", "transformers", "onnx")},
        runtime=_versions("onnxruntime"),
        source={"checkpoint": str(ckpt.resolve())},
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    write_json_atomic(out / MANIFEST, manifest.to_json())
    return Bundle.load(out)

