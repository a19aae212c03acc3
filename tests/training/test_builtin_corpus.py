import gzip
import json

from merino_edge.training.builtin_corpus import MIN_DOC_CHARS, write_builtin_corpus


def test_builtin_corpus_is_english_prose_in_the_corpus_format(tmp_path):
    path = write_builtin_corpus(tmp_path / "builtin.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    assert len(docs) > 100
    assert all(len(d["text"]) >= MIN_DOC_CHARS and d["source"] for d in docs)
    text = " ".join(d["text"] for d in docs)
    assert len(text) > 500_000
    assert text.count(" the ") > 5_000  # prose, not code
    assert any(d["source"].startswith("stdlib/") for d in docs)
    # Deterministic: a second write gives the same documents.
    again = write_builtin_corpus(tmp_path / "again.jsonl.gz")
    with gzip.open(again, "rt", encoding="utf-8") as f:
        assert [json.loads(line) for line in f] == docs
