"""Incremental detokenization never splits a character; stop strings are held back, then cut."""

from __future__ import annotations

import pytest

from merino_edge.runtime.detokenize import IncrementalDecoder, StopMatcher
from merino_edge.tokenizer import Tokenizer

MULTIBYTE = "naïve café — 日本語のテキスト 😀🚀 and ñ at the end: ü"


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer):
    return Tokenizer(tiny_tokenizer)


@pytest.mark.parametrize("context", ["", "Prompt text "])
def test_pieces_are_whole_characters_and_add_up(tokenizer, context):
    ids = tokenizer.encode(MULTIBYTE)
    assert len(ids) > len(MULTIBYTE.encode("utf-8")) // 2  # many byte-fallback tokens: characters span tokens
    decoder = IncrementalDecoder(tokenizer, tokenizer.encode(context))
    pieces = [decoder.push(t) for t in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == MULTIBYTE
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # some tokens held back half a character


def test_leading_space_survives_after_a_prompt(tokenizer):
    prompt, continuation = tokenizer.encode("Hello"), tokenizer.encode(" world")
    decoder = IncrementalDecoder(tokenizer, prompt)
    assert "".join(decoder.push(t) for t in continuation) + decoder.flush() == " world"


def test_stop_matcher_holds_back_a_possible_stop_then_releases_it():
    matcher = StopMatcher(("STOP", "\n\n"))
    assert matcher.push("abc ST") == "abc "
    assert matcher.push("O") == ""
    assert matcher.push("x") == "STOx"
    assert matcher.push("y\n") == "y"
    assert matcher.push("\nrest") == ""
    assert matcher.stopped


def test_stop_matcher_cuts_at_the_earliest_stop_across_pushes():
    matcher = StopMatcher(("cd", "bcx"))
    out = matcher.push("a") + matcher.push("b") + matcher.push("c") + matcher.push("d")
    assert (out, matcher.stopped) == ("ab", True)
