"""The backend interface every inference engine implements, and `create_backend`.

A backend runs the bundle's one graph (its contract: `export/onnx.py`) and keeps the
KV cache of one batch between calls.  The generator drives it in one of two ways.
A padded batch, all rows starting together:

    logits = backend.prefill(input_ids, attention_mask)   # [b, V]: each row's last real token
    logits = backend.decode(next_ids)                     # [b, V]: one new token per row
    backend.reset()                                       # forget the cache

or continuous batching, rows joining and leaving between steps:

    backend.open_slots(n)                                 # KV cache for n sequences, allocated once
    logits = backend.join(prompt_ids, prefix_cache)       # [V]: prefill one sequence alone, add it as the last row
    logits = backend.decode(next_ids)                     # [rows, V]: one graph call for every row
    order = backend.leave([2])                            # drop row 2 (the last row moves into its place)

In slot mode every row's tokens are right-aligned: row r holds its own
`lengths[r]` tokens in the last columns of the cache, the columns before them
are zeros hidden by the attention mask, and its positions count its own tokens
only, so a row computes what it would alone.  Joining and leaving rewrite the
cache's changed rows in place, or, when the columns change, the whole cache
into the other of its two preallocated buffers (`place_rows`); decode steps
append as before.

`Backend` does the bookkeeping (attention mask, position ids, past length, the
context limit, the row layout) once for every engine; an engine subclasses it
and implements:

    _forward(input_ids, position_ids, attention_mask, last, side=False) -> logits [b, V]
        Run input_ids [b, s] against the cached past (past length =
        attention_mask.shape[1] - s, 0 right after `_reset`), append the new
        K/V to the cache and return the logits at column `last[r]` of each row r,
        computing the head only at those columns (`logits_columns`; the graph's
        `logits_to_keep` input) so that a long prompt costs no [s, V] tensor.
        side=True runs one row on the side cache, where `join` prefills.
    _reset()        drop the cache.
    _allocate(rows) preallocate the batch cache for `rows` rows and a one-row side cache.
    _relayout(placements, rows, past, in_place)
        Make the batch cache `rows` rows of `past` columns: for each (k,
        from_side, r, n) in placements, row k becomes the last n tokens of row
        r of the batch cache (or of the side cache), right-aligned, zeros
        before.  in_place: the columns stay and only these rows are written,
        in the cache itself (sources never overlap targets); else every row is
        in `placements`, written into the spare buffer.
    _side_kv(), _set_side_kv(arrays)   (only where `prefix_reuse`)
        Host copies of the side cache's K/V ([1, heads, length, head_dim] per
        cache tensor, graph order), and putting such copies back as its past.
    score(input_ids, attention_mask) -> logits [b, s, V]
        Full-sequence logits without touching the cache (lm-eval).

and sets `name`, `precision`, `max_context`, `max_batch`, `vocab_size`.
Padding may be left (the usual) or right: positions count only real tokens
and a row's new tokens simply follow the longest row, with the mask hiding
the gap.  Engines register by name in `BACKENDS`
("module:Class", constructed as `Class(bundle, threads=, provider=, precision=)`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from merino_edge.bundle import Bundle
from merino_edge.errors import InputError, MerinoError

log = logging.getLogger("merino_edge.runtime")

BACKENDS = {
    "ort": "merino_edge.runtime.backends.ort:OrtBackend",
    "tensorrt": "merino_edge.runtime.backends.tensorrt:TensorRTBackend",
    "torch": "merino_edge.runtime.backends.torch_ref:TorchBackend",
}


class Backend(ABC):
    """A model that prefills a batch, then decodes it one token per row at a time."""

    name: str
    precision: str
    max_context: int
    max_batch: int
    vocab_size: int

    kv_value_bytes: int = 4  # bytes of one cached K or V value
    kv_buffers: int = 2  # buffers per cache tensor: past and present, swapped each step
    prefix_reuse: bool = True  # whether `join` may start from a prefix cache's K/V
    slots: int = 0  # rows `open_slots` allocated for

    _mask: np.ndarray | None = None  # [b, past] int64: the attention mask so far
    _next_position: np.ndarray | None = None  # [b] int64
    _side_length: int = 0  # tokens in the side cache

    # ------------------------------------------------------------- engine API

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, last: np.ndarray, side: bool = False) -> np.ndarray: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _allocate(self, rows: int) -> None: ...

    @abstractmethod
    def _relayout(self, placements: list[tuple[int, bool, int, int]], rows: int, past: int, in_place: bool) -> None: ...

    def _side_kv(self) -> list[np.ndarray]:
        raise NotImplementedError(f"the {self.name} backend does not reuse prefixes")

    def _set_side_kv(self, arrays: list[np.ndarray]) -> None:
        raise NotImplementedError(f"the {self.name} backend does not reuse prefixes")

    @abstractmethod
    def score(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Logits [b, s, V] of every position of `input_ids`, no cache involved."""

    # ---------------------------------------------------------- generator API

    @property
    def past_length(self) -> int:
        """Tokens in the cache (columns of the attention mask, padding included)."""
        return 0 if self._mask is None else self._mask.shape[1]

    @property
    def batch_size(self) -> int:
        return 0 if self._mask is None else self._mask.shape[0]

    def reset(self) -> None:
        self._mask = self._next_position = None
        self._reset()

    def prefill(self, input_ids, attention_mask=None, position_ids=None) -> np.ndarray:
        """Start a new batch: run the prompts, return logits [b, V] at each row's last real token."""
        ids, mask = self._check_inputs(input_ids, attention_mask)
        b, s = ids.shape
        positions = positions_from_mask(mask) if position_ids is None else np.ascontiguousarray(position_ids, dtype=np.int64)
        if positions.shape != ids.shape:
            raise InputError(f"position_ids shape {positions.shape} does not match input_ids {ids.shape}")
        last = s - 1 - np.argmax(mask[:, ::-1], axis=1)  # each row's last real column
        self.reset()
        logits = self._forward(ids, positions, mask, last)
        self._mask = mask
        self._next_position = positions[np.arange(b), last] + 1
        return logits

    def decode(self, token_ids) -> np.ndarray:
        """Append one token to every row of the current batch; return logits [b, V]."""
        if self._mask is None:
            raise InputError("decode before prefill: there is no batch to continue")
        ids = self._check_ids(np.asarray(token_ids).reshape(-1, 1))
        b = ids.shape[0]
        if b != self.batch_size:
            raise InputError(f"decode got {b} tokens for a batch of {self.batch_size}")
        if self.slots and self.past_length + 1 > self.max_context:  # padding columns fill the context: drop them
            self._lay_out([(False, r) for r in range(b)], self.lengths)
        if self.past_length + 1 > self.max_context:
            raise InputError(f"context full: {self.past_length} tokens already, the limit is {self.max_context}")
        mask = np.concatenate([self._mask, np.ones((b, 1), np.int64)], axis=1)
        positions = self._next_position.reshape(b, 1)
        logits = self._forward(ids, positions, mask, np.zeros(b, np.int64))
        self._mask = mask
        self._next_position = self._next_position + 1
        return logits

    # ------------------------------------------------ continuous batching API

    def open_slots(self, slots: int) -> None:
        """Allocate the cache for `slots` sequences decoding together (once) and start with no rows."""
        if not 1 <= slots <= self.max_batch:
            raise InputError(f"parallel: must be 1..{self.max_batch} (this backend's max batch), got {slots}")
        self.reset()
        self._allocate(slots)
        self.slots = slots

    @property
    def lengths(self) -> list[int]:
        """Tokens of each row (slot mode)."""
        return [] if self._mask is None else [int(n) for n in self._mask.sum(axis=1)]

    def join(self, prompt_ids, prefix_cache=None) -> np.ndarray:
        """Prefill one sequence alone and add it as the last row; its logits [V] at the last prompt token.

        With a `PrefixCache` the prefill starts after the longest cached prefix
        of the prompt (at least one token is always run), and the prompt's K/V
        is offered to the cache afterwards.
        """
        ids = self._check_ids(np.asarray(prompt_ids).reshape(1, -1))[0]
        rows, n = self.batch_size, len(ids)
        if rows >= self.slots:
            raise InputError(f"all {self.slots} slots are in use")
        if n >= self.max_context:
            raise InputError(f"prompt of {n} tokens leaves no room in the context of {self.max_context}")
        reuse = prefix_cache is not None and self.prefix_reuse
        start = 0
        if reuse and (hit := prefix_cache.lookup(ids)) is not None:
            start, kv = hit
            self._set_side_kv(kv)
        logits = self._forward(ids[None, start:], np.arange(start, n, dtype=np.int64)[None], np.ones((1, n), np.int64), np.array([n - start - 1]), side=True)
        self._side_length = n
        if reuse:
            prefix_cache.store(ids, self._side_kv)
        self._lay_out([*((False, r) for r in range(rows)), (True, 0)], [*self.lengths, n])
        return logits[0]

    def leave(self, rows) -> list[int]:
        """Drop these rows (slot mode); the last rows move into the holes.

        Returns the old index of every row that stays, in the new order.
        """
        gone, b = set(rows), self.batch_size
        if not gone <= set(range(b)):
            raise InputError(f"leave: rows {sorted(gone)} are not all in a batch of {b}")
        keep = b - len(gone)
        movers = iter([r for r in range(keep, b) if r not in gone])
        order = [next(movers) if r in gone else r for r in range(keep)]
        if not order:
            self.reset()
        else:
            lengths = self.lengths
            self._lay_out([(False, r) for r in order], [lengths[r] for r in order])
        return order

    def _lay_out(self, sources: list[tuple[bool, int]], lengths: list[int]) -> None:
        """Make row k of the batch row r of the batch (or of the side cache, for (True, 0)), for (from_side, r) = sources[k].

        Rows that stay where they are are not touched and only new or moved
        rows are written, unless the columns change: they grow for a longer
        newcomer, and shrink to the longest row once a quarter of them is
        padding no row needs (or the context is full); then the whole cache
        is rewritten into the spare buffer.
        """
        past, longest = self.past_length, max(lengths)
        rewrite = longest > past or (past - longest) * 4 > past or past >= self.max_context
        if rewrite:
            past = longest
        placements = [(k, from_side, r, n) for k, ((from_side, r), n) in enumerate(zip(sources, lengths, strict=True))
                      if rewrite or from_side or r != k]
        self._relayout(placements, len(sources), past, in_place=not rewrite)
        n = np.array(lengths, np.int64)
        self._mask = (np.arange(past)[None, :] >= past - n[:, None]).astype(np.int64)
        self._next_position = n

    def _check_ids(self, input_ids) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
            raise InputError(f"input_ids must be [batch, seq] with at least one token, got shape {ids.shape}")
        if ids.shape[0] > self.max_batch:
            raise InputError(f"batch of {ids.shape[0]} exceeds this backend's max batch {self.max_batch}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InputError(f"token id out of range [0, {self.vocab_size}): {int(ids.min())}..{int(ids.max())}")
        return ids

    def _check_inputs(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        """input_ids [b, s] and attention_mask [b, s] (all ones when None), checked against the limits."""
        ids = self._check_ids(input_ids)
        if ids.shape[1] > self.max_context:
            raise InputError(f"sequence of {ids.shape[1]} tokens exceeds the context of {self.max_context}")
        mask = np.ones(ids.shape, np.int64) if attention_mask is None else np.ascontiguousarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask shape {mask.shape} does not match input_ids {ids.shape}")
        if not mask.any(axis=1).all():
            raise InputError("every row needs at least one real token (attention_mask all zero)")
        return ids, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(precision={self.precision!r}, max_context={self.max_context}, max_batch={self.max_batch})"


def place_rows(dst: np.ndarray, placements: list[tuple[int, np.ndarray, int, int]]) -> None:
    """dst [b, heads, past, d]: row k = the last n columns of src[row], right-aligned, zeros before, for each (k, src, row, n)."""
    past = dst.shape[2]
    for k, src, row, n in placements:
        dst[k, :, : past - n] = 0
        dst[k, :, past - n :] = src[row, :, src.shape[2] - n :]


def logits_columns(last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of `last` (the graph's `logits_to_keep`) and, for each row, the index of its own among them."""
    keep, where = np.unique(last, return_inverse=True)
    return keep.astype(np.int64), where.reshape(-1)


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Position of every token counting only real ones (padding gets 0)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def _load_class(name: str):
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def _auto(bundle: Bundle) -> str:
    """tensorrt when the bundle has an engine and TensorRT is importable, else ort (saying why)."""
    if bundle.engine_record is None:
        log.info("backend auto: using ONNX Runtime (no TensorRT engine in the bundle; `merino-edge build` makes one on the board)")
        return "ort"
    if importlib.util.find_spec("tensorrt") is None:
        log.warning("backend auto: the bundle has a TensorRT engine but TensorRT is not installed; falling back to ONNX Runtime")
        return "ort"
    return "tensorrt"


def create_backend(bundle, name: str = "auto", *, threads: int | None = None, provider: str | None = None, precision: str | None = None) -> Backend:
    """A backend for `bundle` (a `Bundle` or a bundle directory).

    name: "auto" (TensorRT when the bundle has an engine and TensorRT is
    installed, else ONNX Runtime, with a logged notice), "ort", "tensorrt" or
    "torch" (the PyTorch reference; needs torch and the source checkpoint).
    precision: a graph of the bundle, or "auto" / None: the engine's choice
    (ONNX Runtime on a CPU: the smallest graph within its stored quality bound,
    `Bundle.cpu_precision`).
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(Path(bundle))
    precision = None if precision == "auto" else precision
    if name != "auto" and name not in BACKENDS:
        raise InputError(f"backend {name!r}: choose one of auto, {', '.join(BACKENDS)}")
    if name == "auto":
        name = _auto(bundle)
        if name == "tensorrt":
            try:
                return _load_class("tensorrt")(bundle, threads=threads, provider=provider, precision=precision)
            except (MerinoError, ImportError) as exc:
                log.warning("backend auto: TensorRT engine not usable (%s); falling back to ONNX Runtime", exc)
                name = "ort"
    return _load_class(name)(bundle, threads=threads, provider=provider, precision=precision)
