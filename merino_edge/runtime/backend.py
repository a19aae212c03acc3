"""The backend interface every inference engine implements, and `create_backend`.

A backend runs the bundle's one graph (its contract: `export/onnx.py`) and keeps the
KV cache of one batch between calls.  The generator drives it:

    logits = backend.prefill(input_ids, attention_mask)   # [b, V]: each row's last real token
    logits = backend.decode(next_ids)                     # [b, V]: one new token per row
    ...
    backend.reset()                                       # forget the cache

`Backend` does the bookkeeping (attention mask, position ids, past length, the
context limit) once for every engine; an engine subclasses it and implements
three methods:

    _forward(input_ids, position_ids, attention_mask, last) -> logits [b, V]
        Run input_ids [b, s] against the cached past (past length =
        attention_mask.shape[1] - s, 0 right after `_reset`), append the new
        K/V to the cache and return the logits at column `last[r]` of each row r,
        computing the head only at those columns (`logits_columns`; the graph's
        `logits_to_keep` input) so that a long prompt costs no [s, V] tensor.
    _reset()        drop the cache.
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

    _mask: np.ndarray | None = None  # [b, past] int64: the attention mask so far
    _next_position: np.ndarray | None = None  # [b] int64

    # ------------------------------------------------------------- engine API

    @abstractmethod
    def _forward(self, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray, last: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _reset(self) -> None: ...

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
        if self.past_length + 1 > self.max_context:
            raise InputError(f"context full: {self.past_length} tokens already, the limit is {self.max_context}")
        mask = np.concatenate([self._mask, np.ones((b, 1), np.int64)], axis=1)
        positions = self._next_position.reshape(b, 1)
        logits = self._forward(ids, positions, mask, np.zeros(b, np.int64))
        self._mask = mask
        self._next_position = self._next_position + 1
        return logits

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
