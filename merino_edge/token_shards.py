"""The token shards format: a folder of `.bin` token arrays and the `manifest.json` that describes them.

`training.data.prepare_shards` writes it (where the corpus is) and the trainer
reads it (maybe on another machine); the manifest says which tokenizer, split
and sources made the shards, so they are reused only for the same settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from merino_edge.errors import InputError
from merino_edge.fileio import check_schema

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KIND = "merino-edge token shards"


@dataclass
class Shard:
    file: str
    tokens: int = 0
    documents: int = 0
    sha256: str = ""


@dataclass
class Split:
    documents: int = 0
    tokens: int = 0
    shards: list[Shard] = field(default_factory=list)


@dataclass
class ShardManifest:
    """What `prepare_shards` wrote: enough to check and reuse it later."""

    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    dtype: str
    seed: int
    val_fraction: float
    text_unit: str
    sources: list[str]
    splits: dict[str, Split]
    schema_version: int = SCHEMA_VERSION
    kind: str = KIND

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ShardManifest:
        check_schema(data, "data: shard manifest", SCHEMA_VERSION, kind=("kind", KIND), fix="prepare the data again")
        try:
            splits = {name: Split(s["documents"], s["tokens"], [Shard(**sh) for sh in s["shards"]]) for name, s in data["splits"].items()}
            fields = {k: data[k] for k in cls.__dataclass_fields__ if k != "splits"}
        except (KeyError, TypeError) as exc:
            raise InputError(f"data: shard manifest is incomplete ({exc})") from None
        return cls(**fields, splits=splits)

    def matches(self, corpus, tokenizer, val_fraction: float, seed: int) -> bool:
        """Would preparing `corpus` with these settings give exactly these shards?"""
        return (
            self.tokenizer_sha256 == tokenizer.sha256
            and self.sources == list(corpus.sources)
            and self.text_unit == corpus.text_unit
            and self.val_fraction == val_fraction
            and self.seed == seed
        )
