"""Where the tests find ../shared (the data beside the repo; the product never needs it)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
CORPUS = SHARED / "corpus"
EVAL = SHARED / "eval"
