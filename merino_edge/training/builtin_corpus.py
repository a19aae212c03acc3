"""An offline training corpus that every Python install carries.

`merino-edge quickstart` needs English text on a machine with no network and no
data of its own.  Every CPython ships two kinds of it: `pydoc_data.topics`,
the language-reference topics that `help()` shows (about 0.5 MB), and the
docstrings of the standard-library modules (about 2 MB).  This module writes
them as one `.jsonl.gz` of documents, the same format as any other corpus, so
the quickstart trains through the ordinary data path.
"""

from __future__ import annotations

import ast
import gzip
import json
import sysconfig
from collections.abc import Iterator
from pathlib import Path

MIN_DOC_CHARS = 200


def _pydoc_topics() -> Iterator[dict]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions split pydoc_data into its own package
        return
    for name in sorted(topics):
        yield {"text": topics[name].strip(), "source": f"pydoc_data/{name}"}


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                yield doc


def _stdlib_docstrings() -> Iterator[dict]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        text = "\n\n".join(_docstrings(path))
        yield {"text": text, "source": f"stdlib/{path.name}"}


def builtin_documents() -> Iterator[dict]:
    """Documents of at least MIN_DOC_CHARS characters, in a fixed order."""
    for doc in (*_pydoc_topics(), *_stdlib_docstrings()):
        if len(doc["text"]) >= MIN_DOC_CHARS:
            yield doc


def write_builtin_corpus(out_path: str | Path) -> Path:
    """Write the built-in corpus as `.jsonl.gz` (atomically) and return its path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        for doc in builtin_documents():
            f.write(json.dumps(doc) + "\n")
    tmp.replace(out_path)
    return out_path
