"""Prefix reuse: the K/V of recent prompts, so a prompt that starts the same way prefills only the rest.

As llama.cpp's `cache_prompt` does for a chat's system prompt or the
conversation so far.  An entry is one prompt's K/V in host memory
([1, heads, tokens, head_dim] per cache tensor), keyed by its token ids.  A
lookup finds the entry sharing the longest common prefix with the new prompt
and hands back that many tokens of K/V (never the whole prompt: the last token
always runs, for its logits).  Shared prefixes shorter than `min_tokens` are not
worth a copy and count as misses.  Memory is bounded by `max_bytes`; the least
recently used entries go first, and an entry whose tokens begin a newer one is
dropped for it.  Numbers only, never text: what metrics see is a hit count.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import numpy as np

DEFAULT_MIN_TOKENS = 16


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


class PrefixCache:
    """Prompts' K/V by token ids, least recently used first out, at most `max_bytes` in all."""

    def __init__(self, max_bytes: int, *, min_tokens: int = DEFAULT_MIN_TOKENS, on_lookup: Callable[[int], None] | None = None):
        self.max_bytes = max_bytes
        self.min_tokens = max(1, min_tokens)
        self.on_lookup = on_lookup  # called with the tokens reused (0 for a miss)
        self._entries: collections.OrderedDict[bytes, tuple[np.ndarray, list[np.ndarray]]] = collections.OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: np.ndarray) -> tuple[int, list[np.ndarray]] | None:
        """(tokens reused, their K/V) for the prompt `ids`, or None."""
        best_key, best = None, 0
        for key, (tokens, _) in self._entries.items():
            if (n := _common_prefix(tokens, ids)) > best:
                best_key, best = key, n
        reused = min(best, len(ids) - 1)
        if reused < self.min_tokens:
            reused = 0
        if self.on_lookup is not None:
            self.on_lookup(reused)
        if not reused:
            return None
        self._entries.move_to_end(best_key)
        return reused, [kv[:, :, :reused] for kv in self._entries[best_key][1]]

    def store(self, ids: np.ndarray, kv: Callable[[], list[np.ndarray]]) -> None:
        """Keep the K/V of prompt `ids` (`kv()` makes the copy, only when it is kept)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) < self.min_tokens:
            return
        for key, (tokens, _) in self._entries.items():
            if len(tokens) >= len(ids) and _common_prefix(tokens, ids) == len(ids):
                self._entries.move_to_end(key)  # already covered by a longer (or the same) prompt
                return
        arrays = kv()
        size = sum(a.nbytes for a in arrays)
        if size > self.max_bytes:
            return
        for key in [k for k, (tokens, _) in self._entries.items() if _common_prefix(tokens, ids) == len(tokens)]:
            self._drop(key)  # a prefix of this prompt: the new entry serves it too
        self._entries[ids.tobytes()] = (ids, arrays)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        _, arrays = self._entries.pop(key)
        self.bytes -= sum(a.nbytes for a in arrays)
