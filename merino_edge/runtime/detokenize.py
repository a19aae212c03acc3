"""Incremental detokenization and stop strings, for streaming.

SentencePiece decodes a sequence, not a token: a piece's leading space is
dropped at the start of a sequence and a multi-byte character may be split
over several byte-fallback tokens.  `IncrementalDecoder` therefore decodes a
short window that starts a few tokens back (seeded with the prompt's tail) and
emits only the new suffix, holding it back while it ends in an incomplete
UTF-8 sequence (decoded as U+FFFD).  `StopMatcher` then holds back any tail
that could still grow into a stop string, so a stop string is never emitted,
even in part.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns token ids, one at a time, into text deltas that never split a character."""

    def __init__(self, tokenizer, context_ids=()):
        self.tokenizer = tokenizer
        self.ids = list(context_ids)[-4:]
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token_id: int) -> str:
        """Add one token; return the newly complete text (possibly "")."""
        self.ids.append(int(token_id))
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) > len(before) and not text.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes as U+FFFD)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(before) :]


class StopMatcher:
    """Text in, safe text out: cuts at the first stop string, holds back possible stop prefixes."""

    def __init__(self, stop: tuple[str, ...]):
        self.stop = tuple(stop)
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Add text; return what can be emitted.  After a stop string, `stopped` is True."""
        self.pending += text
        if not self.stop:
            out, self.pending = self.pending, ""
            return out
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
            return out
        hold = self._held_back()
        out, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of `pending` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(s[:n]):
                    best = n
                    break
        return best
