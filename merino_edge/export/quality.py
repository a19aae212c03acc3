"""What a quantized graph costs in quality: held-out perplexity against the fp32 graph.

Measured at export on the checkpoint's own validation split (the token shards
that `merino-edge train` keeps in `CKPT/data`) or on text the user names, in
consecutive windows of `seq_len + 1` tokens (the caller reads them:
`merino_edge.training.data.held_out_windows`), each graph run once over them
on ONNX Runtime (CPU) with an empty past.  The result goes into the bundle's
manifest beside the bound it is held to; the runtime's `auto` precision picks
the smallest graph within its bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Largest perplexity increase over fp32 that `auto` accepts, stored in the manifest at export.
MAX_INCREASE = {"int8": 0.01, "int4": 0.05}
EVAL_TOKENS = 8192  # held-out tokens, in windows of EVAL_SEQ_LEN (`merino_edge.training.data.held_out_windows`)
EVAL_SEQ_LEN = 256


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
