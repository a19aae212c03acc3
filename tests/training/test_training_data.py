"""Corpus reading, token shards and the batch sampler."""

import gzip
import json

import numpy as np
import pytest
from local_text import held_out_texts, write_jsonl

from merino_edge.errors import IncompatibleError, InputError
from merino_edge.token_shards import MANIFEST, ShardManifest
from merino_edge.tokenizer import Tokenizer
from merino_edge.training.data import (
    BatchSampler,
    Corpus,
    TokenShards,
    is_validation,
    prepare_shards,
    token_dtype,
    validation_windows,
)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return held_out_texts(60, max_chars=3000)


@pytest.fixture(scope="module")
def jsonl_gz(tmp_path_factory, docs):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "docs.jsonl.gz", docs, compress=True)


def _documents(stream, eos: int) -> list[list[int]]:
    """Split a shard stream back into documents at eos."""
    tokens = stream.read(0, len(stream)).tolist()
    out, current = [], []
    for t in tokens:
        if t == eos:
            out.append(current)
            current = []
        else:
            current.append(t)
    assert current == []  # every document ends with eos
    return out


def test_every_input_kind_is_read(tmp_path, docs):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first file\n")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "two.md").write_text("second file\n")
    (tmp_path / "a" / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "b.jsonl").write_text('{"text": "json one"}\n\n{"text": "json two", "source": "x"}\n{"text": "  "}\n')
    with gzip.open(tmp_path / "c.txt.gz", "wt") as f:
        f.write("para one\nstill one\n\n\npara two\n")
    assert list(Corpus([str(tmp_path / "a")])) == ["first file\n", "second file\n"]
    assert list(Corpus([str(tmp_path / "b.jsonl")])) == ["json one", "json two"]  # blank lines and empty texts skipped
    assert list(Corpus([str(tmp_path / "c.txt.gz")], text_unit="paragraph")) == ["para one\nstill one", "para two"]
    assert list(Corpus([str(tmp_path / "c.txt.gz")], text_unit="line")) == ["para one", "still one", "para two"]
    assert list(Corpus([str(tmp_path / "*.jsonl"), str(tmp_path / "a" / "one.txt")])) == ["json one", "json two", "first file\n"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"body": "no text"}\n', r"bad\.jsonl:2 has no string 'text' field"),
        ('{"text": "ok"}\nnot json\n', r"bad\.jsonl:2 is not valid JSON"),
        ('{"text": 5}\n', r"bad\.jsonl:1 has no string 'text' field"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        list(Corpus([str(tmp_path / "bad.jsonl")]))


def test_missing_inputs_are_named(tmp_path):
    with pytest.raises(InputError, match="input not found: .*nope.txt"):
        Corpus([str(tmp_path / "nope.txt")]).files()
    with pytest.raises(InputError, match="matches no files"):
        Corpus([str(tmp_path / "*.jsonl")]).files()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no"):
        Corpus([str(tmp_path / "empty")]).files()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        list(Corpus([str(tmp_path / "latin1.txt")]))
    with pytest.raises(InputError, match="text unit"):
        Corpus([str(tmp_path)], text_unit="sentence")


def test_hf_dataset_without_network_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(InputError, match="could not load Hugging Face dataset hf:no-such-owner/no-such-set"):
        list(Corpus(["hf:no-such-owner/no-such-set"]))


def test_shards_are_deterministic_and_split_by_document(tmp_path, jsonl_gz, docs, tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    corpus = Corpus([str(jsonl_gz)])
    a = prepare_shards(corpus, tokenizer, tmp_path / "a", val_fraction=0.2, seed=7, shard_tokens=4000, progress=False)
    b = prepare_shards(corpus, tokenizer, tmp_path / "b", val_fraction=0.2, seed=7, shard_tokens=4000, progress=False)
    assert a.to_json() == b.to_json()
    assert len(a.splits["train"].shards) > 1  # shard_tokens rolls over to new files
    for shard in a.splits["train"].shards + a.splits["val"].shards:
        assert (tmp_path / "a" / shard.file).read_bytes() == (tmp_path / "b" / shard.file).read_bytes()

    val_index = [i for i in range(len(docs)) if is_validation(i, 7, 0.2)]
    assert 0 < len(val_index) < len(docs)
    assert a.splits["val"].documents == len(val_index)
    assert a.splits["train"].documents + a.splits["val"].documents == len(docs)
    shards = TokenShards.open(tmp_path / "a")
    assert shards.manifest.dtype == "uint16" and shards.manifest.tokenizer_sha256 == tokenizer.sha256
    val_docs = [tokenizer.decode(ids) for ids in _documents(shards.stream("val"), tokenizer.eos_id)]
    train_docs = [tokenizer.decode(ids) for ids in _documents(shards.stream("train"), tokenizer.eos_id)]
    assert val_docs == [docs[i] for i in val_index]
    assert train_docs == [d for i, d in enumerate(docs) if i not in val_index]
    assert len(shards.stream("train")) == a.splits["train"].tokens
    assert [i for i in range(len(docs)) if is_validation(i, 8, 0.2)] != val_index  # the seed picks the split


def test_manifest_round_trip_and_checks(tmp_path, jsonl_gz, tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    manifest = prepare_shards(Corpus([str(jsonl_gz)]), tokenizer, tmp_path, val_fraction=0.1, progress=False)
    assert ShardManifest.from_json(json.loads((tmp_path / MANIFEST).read_text())) == manifest
    assert token_dtype(70000) == np.uint32 and token_dtype(512) == np.uint16

    data = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(IncompatibleError, match="schema_version 99"):
        TokenShards.open(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    first = tmp_path / manifest.splits["train"].shards[0].file
    first.write_bytes(first.read_bytes()[:-2])
    with pytest.raises(InputError, match="wrong size"):
        TokenShards.open(tmp_path)


def test_empty_corpus_and_empty_validation_split(tmp_path, tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(InputError, match="no documents with text"):
        prepare_shards(Corpus([str(tmp_path / "empty.jsonl")]), tokenizer, tmp_path / "s", progress=False)
    (tmp_path / "one.txt").write_text("a single document\n")
    with pytest.raises(InputError, match="validation split is empty"):
        prepare_shards(Corpus([str(tmp_path / "one.txt")]), tokenizer, tmp_path / "s", val_fraction=0.01, progress=False)


def test_sampler_ranks_slice_the_global_batch_and_position_resumes(tmp_path, jsonl_gz, tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    prepare_shards(Corpus([str(jsonl_gz)]), tokenizer, tmp_path, val_fraction=0.1, shard_tokens=3000, progress=False)
    stream = TokenShards.open(tmp_path).stream("train")
    whole = BatchSampler(stream, 16, 8, 2, seed=3)
    assert whole.accumulation_steps == 4
    global_batch = np.concatenate(whole.batch(5))
    assert global_batch.shape == (8, 17)
    ranks = [np.concatenate(BatchSampler(stream, 16, 8, 2, seed=3, rank=r, world_size=2).batch(5)) for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(ranks), global_batch)
    # windows are real stretches of the token stream (read across shard files)
    stretches = np.lib.stride_tricks.sliding_window_view(stream.read(0, len(stream)), 17)
    for window in global_batch:
        assert (stretches == window).all(axis=1).any()

    run = BatchSampler(stream, 16, 8, 2, seed=3)
    first = [np.concatenate(run.next_batch()) for _ in range(3)]
    state = run.state_dict()
    resumed = BatchSampler(stream, 16, 8, 2, seed=3)
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate(resumed.next_batch()), np.concatenate(run.next_batch()))
    assert not np.array_equal(first[0], first[1])
    with pytest.raises(IncompatibleError, match="seq_len=16"):
        BatchSampler(stream, 32, 8, 2, seed=3).load_state_dict(state)
    with pytest.raises(InputError, match="does not split"):
        BatchSampler(stream, 16, 6, 4, world_size=1)


def test_validation_windows_are_shared_out_by_rank(tmp_path, jsonl_gz, tiny_tokenizer):
    prepare_shards(Corpus([str(jsonl_gz)]), Tokenizer(tiny_tokenizer), tmp_path, val_fraction=0.3, progress=False)
    stream = TokenShards.open(tmp_path).stream("val")
    windows = validation_windows(stream, 32, 32 * 10)
    assert windows.shape == (10, 33)
    np.testing.assert_array_equal(windows[3], stream.read(96, 33))
    parts = [validation_windows(stream, 32, 32 * 10, rank=r, world_size=3) for r in range(3)]
    assert sorted(map(tuple, np.concatenate(parts).tolist())) == sorted(map(tuple, windows.tolist()))
