"""Where tests find data: their own fixtures, and ../shared when it sits beside the repo.

The default run needs nothing outside the repository.  Tests that are worth
running on the full data beside it (the whole evaluation sets, the real corpus)
carry `@pytest.mark.shared_data`; conftest skips them with one line when the
data is absent, and `pytest -m shared_data` runs just them.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()
CORPUS = SHARED / "corpus"
EVAL = SHARED / "eval"
EVAL_FIXTURES = ROOT / "tests" / "evaluation" / "data"  # six items of every task, in the same layout
