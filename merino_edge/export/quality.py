"""What a quantized graph costs in quality: held-out perplexity against the fp32 graph.

Measured at export on the checkpoint's own validation split (the token shards
that `merino-edge train` keeps in `CKPT/data`) or on text the user names, in
consecutive windows of `seq_len + 1` tokens, each graph run once over them on
ONNX Runtime (CPU) with an empty past.  The result goes into the bundle's
manifest beside the bound it is held to; the runtime's `auto` precision picks
the smallest graph within its bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from merino_edge.errors import InputError
from merino_edge.tokenizer import Tokenizer

# Largest perplexity increase over fp32 that `auto` accepts, stored in the manifest at export.
MAX_INCREASE = {"int8": 0.01, "int4": 0.05}
EVAL_TOKENS = 8192
EVAL_SEQ_LEN = 256
DATA_DIR = "data"  # where `merino-edge train` keeps its token shards inside the checkpoint


def held_out_windows(ckpt: Path, tokenizer: Tokenizer, data: Sequence[str] = (), *, seq_len: int = EVAL_SEQ_LEN, tokens: int = EVAL_TOKENS) -> tuple[np.ndarray, str]:
    """int64 [n, seq_len + 1] windows of held-out tokens, and where they came from.

    `data`: a prepared shard directory (its validation split) or text sources
    (files, folders, .jsonl[.gz]); empty: the checkpoint's own `data/` shards.
    """
    from merino_edge.training.data import MANIFEST, Corpus, TokenShards, validation_windows

    sources = list(data) or ([str(ckpt / DATA_DIR)] if (ckpt / DATA_DIR / MANIFEST).is_file() else [])
    if not sources:
        raise InputError(f"quantize: {ckpt} keeps no validation split ({DATA_DIR}/ shards); name held-out text with --eval-data")
    if len(sources) == 1 and (Path(sources[0]) / MANIFEST).is_file():
        shards = TokenShards.open(sources[0])
        shards.check_tokenizer(tokenizer)
        windows, source = validation_windows(shards.stream("val"), seq_len, tokens), f"{sources[0]} (validation split)"
    else:
        ids: list[int] = []
        for text in Corpus(tuple(sources)):
            ids += [*tokenizer.encode(text), tokenizer.eos_id]  # as the training shards hold documents
            if len(ids) > tokens + 1:
                break
        count = min((len(ids) - 1) // seq_len, max(1, tokens // seq_len))
        windows = np.array([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(count)], np.int64).reshape(-1, seq_len + 1)
        source = ", ".join(sources)
    if len(windows) == 0:
        raise InputError(f"quantize: the held-out data {source} has fewer than {seq_len + 1} tokens")
    return windows, source


def graph_perplexity(graph: str | Path, windows: np.ndarray, *, batch: int = 4, threads: int | None = None) -> float:
    """Perplexity of a model graph on `windows` [n, s + 1]: each window's tokens 1..s predicted from the ones before."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    pasts = [(i.name, i.shape[1], i.shape[3]) for i in session.get_inputs() if i.name.startswith("past.")]
    nll, count = 0.0, 0
    for start in range(0, len(windows), batch):
        rows = windows[start : start + batch]
        ids, targets = rows[:, :-1], rows[:, 1:]
        b, s = ids.shape
        positions = np.broadcast_to(np.arange(s), (b, s)).copy()
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": np.ones((b, s), np.int64), "logits_to_keep": np.arange(s)}
        feeds.update({name: np.zeros((b, heads, 0, dim), np.float32) for name, heads, dim in pasts})
        logits = session.run(["logits"], feeds)[0].astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        nll += float((log_z - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]).sum())
        count += targets.size
    return math.exp(nll / count)
