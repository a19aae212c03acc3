"""The SentencePiece tokenizer: lossless round trips on real text, fixed special ids, clear errors."""

import gzip
import hashlib
import json

import pytest
from local_text import held_out_texts
from shared_paths import CORPUS

from merino_edge.cli import main
from merino_edge.errors import InputError
from merino_edge.tokenizer import BOS_ID, EOS_ID, NUM_SPECIAL, PAD_ID, UNK_ID, Tokenizer, train_tokenizer


def test_round_trip_on_held_out_text_and_unicode(tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    samples = [
        *held_out_texts(3),
        "".join(held_out_texts(40))[:20000],
        "  leading spaces,\ttabs,\r\nCRLF and trailing spaces  \n\n\n",
        "Ünïcødé: naïve café, Straße, 日本語のテキスト, emoji 🙂🚀, Ελληνικά, עברית, \u200bzero-width",
    ]
    for text in samples:
        ids = tokenizer.encode(text)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert tokenizer.decode(ids) == text
    # characters never seen in training fall back to their UTF-8 bytes, not to <unk>
    ids = tokenizer.encode("日本語🙂")
    assert UNK_ID not in ids
    assert [tokenizer.id_to_piece(i) for i in ids[:3]] == ["<0xE6>", "<0x97>", "<0xA5>"]


@pytest.mark.shared_data
def test_round_trip_on_the_real_corpus_and_held_out_text(tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    with gzip.open(CORPUS / "linux-docs.jsonl.gz", "rt", encoding="utf-8") as f:
        samples = [json.loads(line)["text"] for _, line in zip(range(20), f, strict=False)]
    samples.append((CORPUS / "tinyshakespeare.txt").read_text(encoding="utf-8")[:50_000])
    for text in samples:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids_sha_and_compression(tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID) == (0, 1, 2, 3)
    assert [tokenizer.id_to_piece(i) for i in range(NUM_SPECIAL + 1)] == ["<unk>", "<s>", "</s>", "<pad>", "<0x00>"]
    assert tokenizer.vocab_size == 512
    assert tokenizer.sha256 == hashlib.sha256(tiny_tokenizer.read_bytes()).hexdigest()
    assert tokenizer.decode([BOS_ID, *tokenizer.encode("hello"), EOS_ID, PAD_ID]) == "hello"
    docs = held_out_texts(20)  # text the tokenizer was not trained on (it saw the pydoc topics)
    tokens = sum(len(ids) for ids in tokenizer.encode_batch(docs))
    assert tokens < 0.7 * sum(len(d.encode("utf-8")) for d in docs)  # BPE merges beat raw bytes


def test_training_is_deterministic_and_streams_from_a_generator(tmp_path):
    def stream():  # a one-shot generator: the trainer must not need to iterate twice
        yield from held_out_texts(40)

    a = train_tokenizer(stream(), tmp_path / "a.model", vocab_size=400, threads=1)
    b = train_tokenizer(stream(), tmp_path / "b.model", vocab_size=400, threads=1)
    assert a.read_bytes() == b.read_bytes()
    assert Tokenizer(a).vocab_size == 400


@pytest.mark.parametrize(
    ("texts", "vocab", "message"),
    [
        ([], 400, "no text"),
        (["   ", "\n\n"], 400, "no text"),
        (["tiny corpus"] * 3, 4000, "too small for vocab_size 4000"),
        (["anything"], 100, "too small: byte fallback needs at least 261"),
        ([held_out_texts(1)[0]], 300, "vocab_size 300 is too small: the corpus's common characters plus the byte pieces need 3"),
    ],
)
def test_bad_training_input_is_an_input_error(tmp_path, texts, vocab, message):
    with pytest.raises(InputError, match=message):
        train_tokenizer(iter(texts), tmp_path / "t.model", vocab_size=vocab)
    assert not (tmp_path / "t.model").exists()


def test_loading_a_file_that_is_not_a_model(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"\x00not a model")
    with pytest.raises(InputError, match="not a SentencePiece model"):
        Tokenizer(tmp_path / "junk.model")
    with pytest.raises(InputError, match="not found"):
        Tokenizer(tmp_path / "missing.model")


def test_cli_tokenizer_train(tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in held_out_texts(30)))
    out = tmp_path / "tok" / "tokenizer.model"
    assert main(["tokenizer", "train", "--data", str(data), "--out", str(out), "--vocab-size", "384"]) == 0
    tokenizer = Tokenizer(out)
    assert tokenizer.vocab_size == 384
    assert tokenizer.sha256 in capsys.readouterr().out

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["tokenizer", "train", "--data", str(empty), "--out", str(tmp_path / "x.model")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no text" in err


def test_special_token_text_in_a_prompt_is_plain_text(tiny_tokenizer):
    tokenizer = Tokenizer(tiny_tokenizer)
    text = "a</s><s><unk><pad>b"  # only token ids (a /v1/completions prompt of ids) reach the special ids
    ids = tokenizer.encode(text)
    assert not set(ids) & {UNK_ID, BOS_ID, EOS_ID, PAD_ID}
    assert tokenizer.decode(ids) == text
