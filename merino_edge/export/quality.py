"""What a quantized graph costs in quality: held-out perplexity against the fp32 graph.

Measured at export on the checkpoint's own validation split (the token shards
that `merino-edge train` keeps in `CKPT/data`) or on text the user names, in
consecutive windows of `seq_len + 1` tokens (the caller reads them:
`merino_edge.training.data.held_out_windows`), each graph run over them on
ONNX Runtime (CPU) in two calls: the first half of each window with an empty
past, the second half against the cache the first left, so that what the
graph's cache loses (the quantized graphs keep it in int8) counts as well.
The result goes into the bundle's
manifest beside the bound it is held to; the runtime's `auto` precision picks
the smallest graph within its bound.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from merino_edge.runtime.backends.ort import ORT_DTYPES, ort_module

# Largest perplexity increase over fp32 that `auto` accepts, stored in the manifest at export.
MAX_INCREASE = {"int8": 0.01, "int4": 0.05}
EVAL_TOKENS = 8192  # held-out tokens, in windows of EVAL_SEQ_LEN (`merino_edge.training.data.held_out_windows`)
EVAL_SEQ_LEN = 256


def graph_session(graph: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of a model graph, to run it whole (no IO binding)."""
    options = ort_module().SessionOptions()
    options.intra_op_num_threads = threads or 0
    return ort_module().InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def graph_perplexity(graph: str | Path, windows: np.ndarray, *, batch: int = 4, threads: int | None = None) -> float:
    """Perplexity of a model graph on `windows` [n, s + 1]: each window's tokens 1..s predicted from the ones before."""
    session = graph_session(graph, threads)
    pasts = [(i.name, i.shape[1], i.shape[3], ORT_DTYPES[i.type]) for i in session.get_inputs() if i.name.startswith("past.")]
    presents = [o.name for o in session.get_outputs() if o.name.startswith("present.")]
    nll, count = 0.0, 0
    for start in range(0, len(windows), batch):
        rows = windows[start : start + batch]
        ids, targets = rows[:, :-1], rows[:, 1:]
        b, s = ids.shape
        half = s // 2
        cache = [np.zeros((b, heads, 0, dim), dtype) for _, heads, dim, dtype in pasts]
        logits = []
        for cols in (slice(0, half), slice(half, s)):  # the second half reads the first from the cache
            n = cols.stop - cols.start
            feeds = {"input_ids": ids[:, cols], "position_ids": np.broadcast_to(np.arange(cols.start, cols.stop), (b, n)).copy(),
                     "attention_mask": np.ones((b, cols.stop), np.int64), "logits_to_keep": np.arange(n)}
            feeds.update({name: past for (name, *_), past in zip(pasts, cache, strict=True)})
            out, *present = session.run(["logits", *presents], feeds)
            logits.append(out)
            cache = present  # with an empty past, the new columns are the whole cache in either form
        logits = np.concatenate(logits, axis=1).astype(np.float64)
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
        nll += float((log_z - np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]).sum())
        count += targets.size
    return math.exp(nll / count)
