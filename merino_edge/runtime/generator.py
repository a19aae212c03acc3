"""Text generation with a KV cache on any backend: one prompt, a stream, a padded batch, or a continuous batch.

A prompt is a string (encoded without special tokens; an empty prompt starts
from eos, the document separator the model was trained with) or a list of
token ids.  Generation ends at `max_tokens`, at eos (unless `ignore_eos`), at
any of `stop_token_ids` (finish_reason "stop"; the token is counted but adds no
text), at a stop string (cut exactly: neither it nor anything after it is
emitted), or when `params.should_stop()` turns true or the stream iterator is
closed (finish_reason "cancelled").  A prompt plus `max_tokens` longer than the
backend's context is refused before anything runs.

Batches are padded (left by default, or right) with an attention mask and
position ids counting real tokens only, so every row generates what it would
alone; each row has its own sampler, seeded with `params.seed`.

`ContinuousBatch` is what the server runs: sequences with their own
parameters join (each prefilled alone) and leave between decode steps, and
every step advances all of them in one graph call (the backend's slot mode).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from merino_edge.bundle import Bundle
from merino_edge.errors import InputError
from merino_edge.runtime.backend import Backend, create_backend
from merino_edge.runtime.detokenize import IncrementalDecoder, StopMatcher
from merino_edge.runtime.sampling import Sampler, SamplingParams
from merino_edge.tokenizer import Tokenizer


@dataclass
class Timings:
    """Seconds from the start of the prefill: to the first token, from it to the last, and in all."""

    ttft_s: float = 0.0
    decode_s: float = 0.0
    total_s: float = 0.0


@dataclass
class Piece:
    """A streamed piece: text that is safe to show (never half a character) and the tokens behind it."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # every generated token, a final stop token included
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    timings: Timings = field(default_factory=Timings)


class _Row:
    """One sequence of a batch: its sampler, detokenizer, stop matcher and results."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, stop_ids: frozenset, vocab_size: int, tokenizer):
        self.prompt_ids = prompt_ids
        self.params = params
        self.stop_ids = stop_ids
        self.sampler = Sampler(params, vocab_size)
        self.sampler.observe(prompt_ids)
        self.decoder = IncrementalDecoder(tokenizer, prompt_ids)
        self.matcher = StopMatcher(params.stop)
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.finish_reason: str | None = None
        self.first_token_at = self.finished_at = 0.0

    def step(self, logits: np.ndarray, now: float) -> Piece:
        """Sample one token and turn it into a piece."""
        token = self.sampler(logits)
        self.sampler.observe([token])
        self.token_ids.append(token)
        self.first_token_at = self.first_token_at or now
        if token in self.stop_ids:
            return self._finish(self._flush(), "stop", [token], now)
        text = self.matcher.push(self.decoder.push(token))
        if self.matcher.stopped:
            return self._finish(text, "stop", [token], now)
        if len(self.token_ids) == self.params.max_tokens:
            text += self._flush()
            return self._finish(text, "stop" if self.matcher.stopped else "length", [token], now)
        self.text.append(text)
        return Piece(text, [token])

    def cancel(self, now: float) -> Piece:
        return self._finish("", "cancelled", [], now)

    def _flush(self) -> str:
        """Text held back for a possible multi-byte character or stop string, now final."""
        text = self.matcher.push(self.decoder.flush())
        return text if self.matcher.stopped else text + self.matcher.flush()

    def _finish(self, text: str, reason: str, tokens: list[int], now: float) -> Piece:
        self.text.append(text)
        self.finish_reason = reason
        self.finished_at = now
        return Piece(text, tokens, reason)

    def completion(self, started: float) -> Completion:
        first = self.first_token_at or self.finished_at
        timings = Timings(ttft_s=first - started, decode_s=self.finished_at - first, total_s=self.finished_at - started)
        return Completion("".join(self.text), self.token_ids, len(self.prompt_ids), len(self.token_ids), self.finish_reason or "cancelled", timings)


class Generator:
    """Generates text from prompts with a backend and the bundle's tokenizer."""

    def __init__(self, backend: Backend, tokenizer):
        self.backend = backend
        self.tokenizer = tokenizer

    @classmethod
    def from_bundle(cls, bundle, backend: str = "auto", *, threads: int | None = None, provider: str | None = None, precision: str | None = None) -> Generator:
        """A generator on `bundle` (a `Bundle` or its directory) with the named backend and its tokenizer."""
        bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        return cls(create_backend(bundle, backend, threads=threads, provider=provider, precision=precision), Tokenizer(bundle.tokenizer_path))

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
            if ids and not all(0 <= t < self.backend.vocab_size for t in ids):
                raise InputError(f"prompt token ids must lie in [0, {self.backend.vocab_size})")
        return ids or [self.tokenizer.eos_id]

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[Piece]:
        """Pieces of the completion as they are generated; the last one has a finish_reason.

        Bad input raises here, before the first piece.  Closing the iterator stops generation.
        """
        params = params or SamplingParams()
        rows, ids, mask = self._start([self.encode(prompt)], params, "left")
        return _pieces(self._run(rows, ids, mask, params))

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Completion:
        return self.generate_batch([prompt], params)[0]

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None, *, padding_side: str = "left") -> list[Completion]:
        """Completions of several prompts, run together (in chunks of the backend's max batch)."""
        if padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        params = params or SamplingParams()
        encoded = [self.encode(p) for p in prompts]
        chunks = [encoded[i : i + self.backend.max_batch] for i in range(0, len(encoded), self.backend.max_batch)]
        starts = [self._start(chunk, params, padding_side) for chunk in chunks]  # all checked before any runs
        results = []
        for rows, ids, mask in starts:
            started = time.perf_counter()
            for _ in self._run(rows, ids, mask, params):
                pass
            results.extend(row.completion(started) for row in rows)
        return results

    def _rows(self, prompts: list[list[int]], params: SamplingParams) -> list[_Row]:
        """One row per prompt, after checking the longest against the context."""
        longest = max(len(p) for p in prompts)
        if longest + params.max_tokens > self.backend.max_context:
            raise InputError(
                f"prompt of {longest} tokens + max_tokens {params.max_tokens} = {longest + params.max_tokens} exceeds the context of {self.backend.max_context} tokens"
            )
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else {self.tokenizer.eos_id})
        return [_Row(p, params, stop_ids, self.backend.vocab_size, self.tokenizer) for p in prompts]

    def _start(self, prompts: list[list[int]], params: SamplingParams, padding_side: str) -> tuple[list[_Row], np.ndarray, np.ndarray]:
        """Check the batch against the context and lay it out: rows, padded ids, attention mask."""
        rows = self._rows(prompts, params)
        longest = max(len(p) for p in prompts)
        ids = np.full((len(prompts), longest), self.tokenizer.pad_id, np.int64)
        mask = np.zeros_like(ids)
        for i, p in enumerate(prompts):
            span = slice(longest - len(p), longest) if padding_side == "left" else slice(0, len(p))
            ids[i, span], mask[i, span] = p, 1
        return rows, ids, mask

    def _run(self, rows: list[_Row], ids: np.ndarray, mask: np.ndarray, params: SamplingParams) -> Iterator[list[Piece]]:
        """Prefill, then decode until every row is done; yield the pieces of each step."""
        backend = self.backend
        try:
            logits = backend.prefill(ids, mask)
            while True:
                now = time.perf_counter()
                live = [(i, row) for i, row in enumerate(rows) if row.finish_reason is None]
                if params.should_stop is not None and params.should_stop():
                    yield [row.cancel(now) for _, row in live]
                    return
                yield [row.step(logits[i], now) for i, row in live]
                if all(row.finish_reason for row in rows):
                    return
                logits = backend.decode(np.array([row.token_ids[-1] for row in rows], np.int64))
        finally:
            backend.reset()


class ContinuousBatch:
    """Up to `slots` sequences decoding together; each joins after its prefill and leaves when it ends.

    `add` prefills a prompt alone (after the longest prefix `prefix_cache`
    holds) and samples its first token; an unfinished sequence joins the rows.
    `step` advances every row by one token in one graph call.  A row that ends
    (stop, length, or `params.should_stop()` turning true: "cancelled") leaves
    in the same step and frees its slot.  Not thread-safe: one thread drives it.
    """

    def __init__(self, generator: Generator, slots: int, prefix_cache=None):
        self.generator = generator
        self.backend = generator.backend
        self.prefix_cache = prefix_cache
        self.backend.open_slots(slots)
        self.slots = slots
        self.rows: list[_Row] = []

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    def add(self, prompt: str | Sequence[int], params: SamplingParams) -> tuple[_Row, Piece]:
        """Start a sequence: its row and first piece.  Bad input raises before anything runs."""
        if not self.free:
            raise InputError(f"all {self.slots} slots are in use")
        ids = self.generator.encode(prompt)
        (row,) = self.generator._rows([ids], params)
        logits = self.backend.join(ids, self.prefix_cache)
        piece = row.step(logits, time.perf_counter())
        self.rows.append(row)
        if row.finish_reason is not None:
            self._leave([row])
        return row, piece

    def step(self) -> list[tuple[_Row, Piece]]:
        """One token for every row: (row, piece) pairs, cancelled rows first."""
        now = time.perf_counter()
        cancelled = [row for row in self.rows if row.params.should_stop is not None and row.params.should_stop()]
        out = [(row, row.cancel(now)) for row in cancelled]
        self._leave(cancelled)
        if self.rows:
            logits = self.backend.decode(np.array([row.token_ids[-1] for row in self.rows], np.int64))
            now = time.perf_counter()
            out += [(row, row.step(logits[i], now)) for i, row in enumerate(self.rows)]
            self._leave([row for row in self.rows if row.finish_reason is not None])
        return out

    def clear(self) -> None:
        """Forget every row (after a failed step)."""
        self.rows = []
        self.backend.reset()

    def _leave(self, rows: list[_Row]) -> None:
        if rows:
            gone = {id(row) for row in rows}
            order = self.backend.leave([i for i, row in enumerate(self.rows) if id(row) in gone])
            self.rows = [self.rows[i] for i in order]


def _pieces(run: Iterator[list[Piece]]) -> Iterator[Piece]:
    with closing(run):
        for pieces in run:
            yield from pieces
