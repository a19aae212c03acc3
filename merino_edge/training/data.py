"""Corpus preparation: documents in, token shards out, batches for the trainer.

Inputs (`Corpus`): text files, folders (searched recursively), globs,
`.jsonl` / `.jsonl.gz` files with a `text` field, or `hf:NAME[:CONFIG][@SPLIT]`
for a Hugging Face dataset (needs the `datasets` package and a network).  A
plain text file is one document, or one per paragraph / line with
`text_unit`.  Everything is streamed: no step holds the whole corpus.

Output (`prepare_shards`): token shards, flat arrays of token ids (`uint16`
when the vocabulary fits, else `uint32`) written to `.bin` files and read back
with `np.memmap`, each document followed by eos, plus `manifest.json`.  A
document goes to the validation split when a hash of (seed, document index)
falls under the validation fraction, so the split is by document and the same
on every run.

Batches (`BatchSampler`): step s draws the global batch of windows from an RNG
seeded by (seed, s) alone, and each DDP rank takes its own slice of it, so the
position in the data is just the step: a resumed run neither skips nor repeats
a batch, and a run on W ranks sees the same global batch as a run on one.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merino_edge.errors import IncompatibleError, InputError, MissingDependencyError
from merino_edge.fileio import read_json, write_json_atomic
from merino_edge.token_shards import MANIFEST, Shard, ShardManifest, Split
from merino_edge.tokenizer import Tokenizer

DATA_DIR = "data"  # where `merino-edge train` keeps its token shards inside the checkpoint

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
TEXT_UNITS = ("file", "paragraph", "line")
SPLITS = ("train", "val")


# --------------------------------------------------------------- documents


def _suffix_kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(tuple(s + ".gz" for s in TEXT_SUFFIXES)) or name.endswith(TEXT_SUFFIXES):
        return "text"
    return ""


def resolve_sources(sources: list[str]) -> list[str]:
    """Expand folders and globs into a sorted list of files (hf: names kept)."""
    if not sources:
        raise InputError("data: no input given")
    files: list[str] = []
    for source in sources:
        source = str(source)
        path = Path(source)
        if source.startswith("hf:"):
            files.append(source)
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and _suffix_kind(p))
            if not found:
                raise InputError(f"data: folder {source} holds no .txt/.md/.rst/.jsonl/.jsonl.gz files")
            files.extend(found)
        elif path.is_file():
            files.append(source)
        elif any(c in source for c in "*?["):
            found = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not found:
                raise InputError(f"data: glob {source} matches no files")
            files.extend(found)
        else:
            raise InputError(f"data: input not found: {source}")
    return files


def _open_text(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _jsonl_documents(path: str) -> Iterator[str]:
    with _open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise InputError(f"data: {path}:{number} is not valid JSON") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise InputError(f"data: {path}:{number} has no string 'text' field")
            yield text


def _text_documents(path: str, unit: str) -> Iterator[str]:
    with _open_text(path) as f:
        if unit == "line":
            yield from (line.rstrip("\n") for line in f)
            return
        if unit == "file":
            yield f.read()
            return
        paragraph: list[str] = []
        for line in f:
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph).rstrip("\n")
                paragraph = []
        if paragraph:
            yield "".join(paragraph).rstrip("\n")


def _hf_documents(source: str) -> Iterator[str]:
    match = re.fullmatch(r"hf:([^:@]+)(?::([^@]+))?(?:@(.+))?", source)
    if not match:
        raise InputError(f"data: {source}: expected hf:NAME[:CONFIG][@SPLIT]")
    name, config, split = match.group(1), match.group(2), match.group(3) or "train"
    try:
        import datasets
    except ImportError:
        raise MissingDependencyError(f"data: {source} needs the 'datasets' package: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, config, split=split, streaming=True)
        for number, row in enumerate(rows):
            text = row.get("text")
            if not isinstance(text, str):
                raise InputError(f"data: {source} row {number} has no string 'text' field")
            yield text
    except (OSError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"data: could not load Hugging Face dataset {source} (needs a network): {first}") from None


@dataclass(frozen=True)
class Corpus:
    """Re-iterable stream of document texts from `sources` (empty documents skipped)."""

    sources: tuple[str, ...]
    text_unit: str = "file"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(str(s) for s in self.sources))
        if self.text_unit not in TEXT_UNITS:
            raise InputError(f"data: text unit {self.text_unit!r} is not one of {', '.join(TEXT_UNITS)}")

    def files(self) -> list[str]:
        return resolve_sources(list(self.sources))

    def __iter__(self) -> Iterator[str]:
        for source in self.files():
            if source.startswith("hf:"):
                docs = _hf_documents(source)
            elif _suffix_kind(Path(source)) == "jsonl":
                docs = _jsonl_documents(source)
            else:
                docs = _text_documents(source, self.text_unit)
            try:
                yield from (doc for doc in docs if doc.strip())
            except UnicodeDecodeError:
                raise InputError(f"data: {source} is not UTF-8 text") from None
            except (EOFError, OSError) as exc:
                raise InputError(f"data: {source} could not be read ({exc})") from None


# ------------------------------------------------------------------ shards


def is_validation(index: int, seed: int, val_fraction: float) -> bool:
    """Deterministic document-level split: hash of (seed, index) under the fraction."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < val_fraction


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class _SplitWriter:
    """Appends documents to numbered shard files of one split."""

    def __init__(self, out_dir: Path, name: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.out_dir, self.name, self.dtype, self.shard_tokens = out_dir, name, dtype, shard_tokens
        self.split = Split()
        self._file = None
        self._hash = None

    def add(self, ids: list[int], eos: int) -> None:
        if self._file is None or self.split.shards[-1].tokens >= self.shard_tokens:
            self._roll()
        array = np.asarray([*ids, eos], dtype=self.dtype)
        data = array.tobytes()
        self._file.write(data)
        self._hash.update(data)
        shard = self.split.shards[-1]
        shard.tokens += len(array)
        shard.documents += 1
        self.split.tokens += len(array)
        self.split.documents += 1

    def _roll(self) -> None:
        self.close()
        shard = Shard(file=f"{self.name}-{len(self.split.shards):05d}.bin")
        self.split.shards.append(shard)
        self._file = open(self.out_dir / (shard.file + ".tmp"), "wb")  # noqa: SIM115 - closed in close()
        self._hash = hashlib.sha256()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            shard = self.split.shards[-1]
            shard.sha256 = self._hash.hexdigest()
            os.replace(self.out_dir / (shard.file + ".tmp"), self.out_dir / shard.file)
            self._file = None


def prepare_shards(
    corpus: Corpus,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.02,
    seed: int = 0,
    shard_tokens: int = 2**28,
    batch_docs: int = 256,
    progress: bool = True,
) -> ShardManifest:
    """Tokenize `corpus` into train/val shards under `out_dir` and write the manifest last."""
    from tqdm import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"data: validation fraction {val_fraction} must be in [0, 1)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {name: _SplitWriter(out_dir, name, dtype, shard_tokens) for name in SPLITS}
    bar = tqdm(desc="tokenizing", unit=" doc", disable=not progress, dynamic_ncols=True)
    index = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal index
        for ids in tokenizer.encode_batch(batch):
            split = "val" if is_validation(index, seed, val_fraction) else "train"
            writers[split].add(ids, tokenizer.eos_id)
            index += 1
        bar.set_postfix(tokens=f"{writers['train'].split.tokens + writers['val'].split.tokens:,}", refresh=False)
        bar.update(len(batch))
        batch.clear()

    try:
        for text in corpus:
            batch.append(text)
            if len(batch) >= batch_docs:
                flush()
        flush()
    finally:
        bar.close()
        for writer in writers.values():
            writer.close()
    if index == 0:
        raise InputError(f"data: the corpus {', '.join(corpus.sources)} has no documents with text")
    if val_fraction > 0 and writers["val"].split.documents == 0:
        raise InputError(
            f"data: the validation split is empty ({index} documents, validation fraction {val_fraction}): "
            "give more documents, a larger validation fraction, or a finer --text-unit"
        )
    manifest = ShardManifest(
        tokenizer_sha256=tokenizer.sha256,
        vocab_size=tokenizer.vocab_size,
        eos_id=tokenizer.eos_id,
        dtype=dtype.name,
        seed=seed,
        val_fraction=val_fraction,
        text_unit=corpus.text_unit,
        sources=list(corpus.sources),
        splits={name: writer.split for name, writer in writers.items()},
    )
    write_json_atomic(out_dir / MANIFEST, manifest.to_json())
    return manifest


# ----------------------------------------------------------- reading back


class TokenStream:
    """The shards of one split as one flat, read-only sequence of token ids."""

    def __init__(self, out_dir: Path, split: Split, dtype: str) -> None:
        self.arrays = [np.memmap(out_dir / s.file, dtype=dtype, mode="r") for s in split.shards if s.tokens]
        self.starts = np.cumsum([0] + [len(a) for a in self.arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64, across shard boundaries."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"tokens [{start}, {start + length}) out of range 0..{len(self)}")
        parts = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while length > 0:
            offset = start - int(self.starts[shard])
            piece = self.arrays[shard][offset : offset + length]
            parts.append(piece)
            start += len(piece)
            length -= len(piece)
            shard += 1
        return np.concatenate(parts).astype(np.int64)


@dataclass
class TokenShards:
    """A prepared shard directory: its manifest and its splits."""

    path: Path
    manifest: ShardManifest

    @classmethod
    def open(cls, path: str | Path) -> TokenShards:
        path = Path(path)
        data = read_json(path / MANIFEST, "data: shard manifest", missing=f"data: {path} has no {MANIFEST} (not a prepared shard directory)")
        manifest = ShardManifest.from_json(data)
        for split in manifest.splits.values():
            for shard in split.shards:
                file = path / shard.file
                if not file.is_file() or file.stat().st_size != shard.tokens * np.dtype(manifest.dtype).itemsize:
                    raise InputError(f"data: shard {file} is missing or has the wrong size; prepare the data again")
        return cls(path, manifest)

    def stream(self, split: str) -> TokenStream:
        return TokenStream(self.path, self.manifest.splits[split], self.manifest.dtype)

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        if self.manifest.tokenizer_sha256 != tokenizer.sha256:
            raise IncompatibleError(f"data: the shards in {self.path} were made with another tokenizer; prepare them again with this one")


# ----------------------------------------------------------------- batches


class BatchSampler:
    """Windows of `seq_len + 1` tokens for one rank, step by step.

    Step s's global batch is `batch_seqs` random windows drawn from an RNG
    seeded by (seed, s); rank r of `world_size` gets windows
    [r * batch_seqs / world_size, (r + 1) * batch_seqs / world_size), split
    into micro-batches of `micro_batch`.  `position` (the next step) is the
    only state.
    """

    def __init__(self, stream: TokenStream, seq_len: int, batch_seqs: int, micro_batch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(stream) < seq_len + 1:
            raise InputError(f"data: the training split has {len(stream)} tokens, fewer than one sequence of {seq_len + 1}")
        per_rank, rest = divmod(batch_seqs, world_size)
        if rest or per_rank % micro_batch:
            raise InputError(
                f"train: a global batch of {batch_seqs} sequences does not split into {world_size} rank(s) x micro-batches of {micro_batch}"
            )
        self.stream, self.seq_len, self.batch_seqs, self.micro_batch = stream, seq_len, batch_seqs, micro_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.position = 0

    @property
    def accumulation_steps(self) -> int:
        return self.batch_seqs // self.world_size // self.micro_batch

    def batch(self, step: int) -> list[np.ndarray]:
        """This rank's micro-batches of step `step`, each int64 [micro_batch, seq_len + 1]."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.stream) - self.seq_len, size=self.batch_seqs)
        per_rank = self.batch_seqs // self.world_size
        mine = starts[self.rank * per_rank : (self.rank + 1) * per_rank]
        windows = np.stack([self.stream.read(int(s), self.seq_len + 1) for s in mine])
        return [windows[i : i + self.micro_batch] for i in range(0, per_rank, self.micro_batch)]

    def next_batch(self) -> list[np.ndarray]:
        """The micro-batches at `position`, then advance it by one step."""
        micro_batches = self.batch(self.position)
        self.position += 1
        return micro_batches

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "seq_len": self.seq_len, "batch_seqs": self.batch_seqs}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "seq_len", "batch_seqs"):
            if state[key] != mine[key]:
                raise IncompatibleError(f"train: the checkpoint was made with {key}={state[key]}, this run has {mine[key]}")
        self.position = int(state["position"])


def validation_windows(stream: TokenStream, seq_len: int, max_tokens: int, *, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Consecutive windows of `seq_len + 1` tokens from the start of the split (this rank's share)."""
    count = min((len(stream) - 1) // seq_len, max(1, max_tokens // seq_len))
    if count <= 0:
        return np.zeros((0, seq_len + 1), dtype=np.int64)
    mine = range(rank, count, world_size)
    return np.stack([stream.read(i * seq_len, seq_len + 1) for i in mine]) if mine else np.zeros((0, seq_len + 1), dtype=np.int64)


def held_out_windows(ckpt: Path, tokenizer: Tokenizer, data: Sequence[str] = (), *, seq_len: int, tokens: int) -> tuple[np.ndarray, str]:
    """int64 [n, seq_len + 1] windows of held-out tokens, and where they came from.

    For the perplexity check of quantized graphs at export. `data`: a prepared
    shard directory (its validation split) or text sources (files, folders,
    .jsonl[.gz]); empty: the checkpoint's own `data/` shards.
    """
    sources = list(data) or ([str(Path(ckpt) / DATA_DIR)] if (Path(ckpt) / DATA_DIR / MANIFEST).is_file() else [])
    if not sources:
        raise InputError(f"quantize: {ckpt} keeps no validation split (data/ shards); name held-out text with --eval-data")
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
