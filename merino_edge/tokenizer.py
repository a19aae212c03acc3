"""SentencePiece tokenizer: training from a stream of texts, and loading.

BPE with byte fallback and identity normalization, so that `decode(encode(t))
== t` for every string (unknown characters become UTF-8 byte pieces, spaces and
newlines are kept as they are).  Special ids are fixed: unk=0, bos=1, eos=2,
pad=3; the 256 byte pieces follow.

Torch-free and Python 3.10-valid: the on-board runtime imports this module.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.fileio import write_bytes_atomic

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
NUM_SPECIAL = 4
NUM_BYTE_PIECES = 256
FILE_NAME = "tokenizer.model"

# SentencePiece trains on "sentences": documents are cut at line ends into
# pieces of about this many characters, newlines kept so they become pieces.
_SENTENCE_CHARS = 2000
_MAX_SENTENCE_BYTES = 4 * _SENTENCE_CHARS + 4096


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError:  # pragma: no cover - a base dependency
        raise MissingDependencyError("sentencepiece is not installed: pip install sentencepiece") from None
    return sentencepiece


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    """Cut each text at line ends into pieces of at most ~_SENTENCE_CHARS characters."""
    for text in texts:
        buf: list[str] = []
        size = 0
        for line in text.splitlines(keepends=True):
            while len(line) > _SENTENCE_CHARS:  # one very long line: cut it anywhere
                if buf:
                    yield "".join(buf)
                    buf, size = [], 0
                yield line[:_SENTENCE_CHARS]
                line = line[_SENTENCE_CHARS:]
            buf.append(line)
            size += len(line)
            if size >= _SENTENCE_CHARS:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | Path,
    vocab_size: int = 32000,
    *,
    input_sentence_size: int = 2_000_000,
    character_coverage: float = 0.9995,
    seed: int = 0,
    threads: int | None = None,
) -> Path:
    """Train a BPE SentencePiece model on `texts` and write it to `out_path`.

    `texts` is consumed as a stream; SentencePiece keeps at most
    `input_sentence_size` sentences (a uniform sample when there are more), so
    memory stays bounded for big corpora.  The file is written atomically.
    """
    spm = _sentencepiece()
    minimum = NUM_SPECIAL + NUM_BYTE_PIECES + 1
    if vocab_size < minimum:
        raise InputError(f"tokenizer: vocab_size {vocab_size} is too small: byte fallback needs at least {minimum}")
    seen = {"sentences": 0}

    def counted() -> Iterator[str]:
        for sentence in _sentences(texts):
            if sentence.strip():
                seen["sentences"] += 1
                yield sentence

    spm.set_random_generator_seed(seed)
    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted(),
            model_writer=proto,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            character_coverage=character_coverage,
            max_sentence_length=_MAX_SENTENCE_BYTES,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=threads or os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        if seen["sentences"] == 0:
            raise InputError("tokenizer: the corpus has no text to train on") from None
        chars = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(exc))
        if chars:
            raise InputError(
                f"tokenizer: vocab_size {vocab_size} is too small: the corpus's common characters plus the byte pieces need {chars.group(1)}"
            ) from None
        limit = re.search(r"value <= (\d+)", str(exc))
        if limit:
            raise InputError(f"tokenizer: the corpus is too small for vocab_size {vocab_size} (at most {limit.group(1)} pieces fit)") from None
        raise InputError(f"tokenizer: SentencePiece training failed: {exc}") from None
    return write_bytes_atomic(out_path, proto.getvalue())




class Tokenizer:
    """A trained SentencePiece model: `encode(text) -> ids`, `decode(ids) -> text`."""

    def __init__(self, path: str | Path) -> None:
        spm = _sentencepiece()
        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise InputError(f"tokenizer file not found: {self.path}") from None
        except IsADirectoryError:
            raise InputError(f"tokenizer: {self.path} is a directory, not a SentencePiece model") from None
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(data)
        except (RuntimeError, OSError):
            raise InputError(f"tokenizer: {self.path} is not a SentencePiece model") from None
        self.sha256 = hashlib.sha256(data).hexdigest()
        ids = (self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id())
        if ids != (UNK_ID, BOS_ID, EOS_ID, PAD_ID):
            raise InputError(f"tokenizer: {self.path} has special ids (unk, bos, eos, pad) = {ids}, expected (0, 1, 2, 3)")

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID
    unk_id = UNK_ID

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos or eos."""
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts at once (SentencePiece's threads)."""
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special ids decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"
