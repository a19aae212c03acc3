"""Generation on the ONNX Runtime backend: sampling, stop strings, streaming, batches, limits, cancel."""

from __future__ import annotations

import pytest

from merino_edge.errors import InputError
from merino_edge.runtime import Generator, SamplingParams

GREEDY = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def generator(tiny_bundle):
    return Generator.from_bundle(tiny_bundle, "ort", threads=1)


def test_sampling_is_reproducible_under_a_seed(generator):
    params = dict(max_tokens=32, temperature=1.0, top_k=50, top_p=0.9, repetition_penalty=1.1, ignore_eos=True)
    first = generator.generate("Once upon a time", SamplingParams(seed=7, **params))
    again = generator.generate("Once upon a time", SamplingParams(seed=7, **params))
    other = generator.generate("Once upon a time", SamplingParams(seed=8, **params))
    assert first.token_ids == again.token_ids
    assert first.text == again.text
    assert other.token_ids != first.token_ids


def test_max_tokens_ends_with_length(generator):
    done = generator.generate("The kernel", GREEDY)
    assert (done.completion_tokens, done.finish_reason) == (40, "length")
    assert done.prompt_tokens == len(generator.tokenizer.encode("The kernel"))
    assert done.text == generator.tokenizer.decode(done.token_ids)
    assert 0 < done.timings.ttft_s <= done.timings.total_s


@pytest.mark.parametrize("start", [1, 7, 15])
def test_stop_string_is_cut_exactly(generator, start):
    full = generator.generate("The kernel", GREEDY).text
    stop = full[start : start + 3]
    cut = full[: full.find(stop)]
    done = generator.generate("The kernel", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=("never appears", stop)))
    assert done.finish_reason == "stop"
    assert done.text == cut
    pieces = list(generator.stream("The kernel", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, stop=(stop,))))
    assert "".join(p.text for p in pieces) == cut
    assert pieces[-1].finish_reason == "stop"


def test_stop_token_ends_generation(generator):
    full = generator.generate("The kernel", GREEDY)
    stop_token = full.token_ids[5]
    first = full.token_ids.index(stop_token)
    done = generator.generate("The kernel", SamplingParams(max_tokens=40, temperature=0, stop_token_ids=(stop_token,)))
    assert done.finish_reason == "stop"
    assert done.token_ids == full.token_ids[: first + 1]
    assert done.text == generator.tokenizer.decode(full.token_ids[:first])


def test_stream_pieces_concatenate_to_the_completion(generator):
    params = SamplingParams(max_tokens=48, temperature=0.9, seed=3, ignore_eos=True)
    done = generator.generate("Python is", params)
    pieces = list(generator.stream("Python is", params))
    assert "".join(p.text for p in pieces) == done.text
    assert [t for p in pieces for t in p.token_ids] == done.token_ids
    assert [p.finish_reason for p in pieces] == [None] * (len(pieces) - 1) + ["length"]
    for piece in pieces:
        piece.text.encode("utf-8")  # a complete str: never half of a character


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_single_runs(generator, side):
    prompts = ["The quick brown fox", "hi", "def f(x):\n    return x", "Linux"]
    singles = [generator.generate(p, GREEDY).token_ids for p in prompts]
    batch = generator.generate_batch(prompts, GREEDY, padding_side=side)
    assert [c.token_ids for c in batch] == singles


def test_batch_larger_than_max_batch_runs_in_chunks(generator):
    prompts = [f"item {i}" for i in range(6)]  # the tiny bundle's max batch is 4
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    assert [c.token_ids for c in generator.generate_batch(prompts, params)] == [generator.generate(p, params).token_ids for p in prompts]


def test_prompt_plus_max_tokens_over_context_is_refused(generator):
    prompt = list(range(10, 110))  # 100 tokens; the context is 128
    with pytest.raises(InputError, match=r"prompt of 100 tokens \+ max_tokens 29 = 129 exceeds the context of 128"):
        generator.stream(prompt, SamplingParams(max_tokens=29))
    assert generator.generate(prompt, SamplingParams(max_tokens=28, temperature=0, ignore_eos=True)).completion_tokens == 28
    with pytest.raises(InputError, match="exceeds the context"):
        generator.generate_batch(["short", prompt], SamplingParams(max_tokens=29))


def test_should_stop_cancels(generator):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 5

    done = generator.generate("The kernel", SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, should_stop=should_stop))
    assert done.finish_reason == "cancelled"
    assert done.completion_tokens == 5


def test_closing_the_stream_stops_and_frees_the_batch(generator):
    stream = generator.stream("The kernel", GREEDY)
    taken = [next(stream) for _ in range(3)]
    assert generator.backend.past_length > 0
    stream.close()
    assert generator.backend.past_length == 0
    assert len(taken) == 3
    assert generator.generate("The kernel", GREEDY).completion_tokens == 40


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_tokens": 0}, "max_tokens"), ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k"), ({"stop": ("",)}, "stop")],
)
def test_bad_sampling_params_are_refused(kwargs, field):
    with pytest.raises(InputError, match=f"^{field}: must be"):
        SamplingParams(**kwargs)
