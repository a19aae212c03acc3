"""English text for tests from what every CPython ships (no data beside the repo).

`training_texts` are the `pydoc_data` topics (what `help()` shows), the text the
session tokenizer is trained on; `held_out_texts` are standard-library
docstrings, text that tokenizer never saw.  Both come from the built-in corpus
the quickstart trains on, in a fixed order, so tests are reproducible.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

from merino_edge.training.builtin_corpus import builtin_documents


@functools.cache
def _documents() -> tuple[dict, ...]:
    return tuple(builtin_documents())


def training_texts(max_chars: int) -> list[str]:
    """The first pydoc topics, at least `max_chars` characters in all."""
    texts, size = [], 0
    for doc in _documents():
        if not doc["source"].startswith("pydoc_data/"):
            break
        texts.append(doc["text"])
        size += len(doc["text"])
        if size >= max_chars:
            break
    return texts


def held_out_texts(count: int, max_chars: int | None = None) -> list[str]:
    """`count` standard-library docstring documents, each cut to `max_chars`."""
    docs = [d["text"][:max_chars] for d in _documents() if d["source"].startswith("stdlib/")]
    assert len(docs) >= count, f"only {len(docs)} stdlib documents on this Python"
    return docs[:count]


def write_jsonl(path: Path, texts: list[str], *, compress: bool = False) -> Path:
    """Texts as one `{"text", "source"}` document a line (gzipped when asked)."""
    lines = "".join(json.dumps({"text": t, "source": f"doc{i}"}) + "\n" for i, t in enumerate(texts))
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path
