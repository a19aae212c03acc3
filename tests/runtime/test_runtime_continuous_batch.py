"""Continuous batching on the ONNX Runtime backend: a sequence's output never depends on what else runs."""

from __future__ import annotations

import numpy as np
import pytest

from merino_edge.errors import InputError
from merino_edge.runtime import Generator, SamplingParams, create_backend
from merino_edge.runtime.generator import ContinuousBatch
from merino_edge.runtime.prefix_cache import PrefixCache

PROMPTS = [
    "The quick brown fox",
    "hi",
    "def f(x):\n    return x",
    "Linux is a family of open source operating systems based on the kernel",
    "import numpy as np",
    "a",
    "Once upon a time there was a little board that served many clients at once",
    "for i in range(10):",
]
MAX_TOKENS = [7, 3, 12, 5, 9, 1, 14, 4]  # different lengths, so sequences leave at different steps


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)


def seeded(n: int, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.1, seed=seed, ignore_eos=True)


@pytest.fixture(scope="module", params=["fp32", "int4"])
def generator(request, tiny_bundle, tiny_bundle_int4):
    """The fp32 graph (its cache appended to by the runtime) and the int4 one (an int8 cache its attention writes in place)."""
    bundle = tiny_bundle if request.param == "fp32" else tiny_bundle_int4
    return Generator.from_bundle(bundle, "ort", threads=1, precision=request.param)


def run_batch(batch: ContinuousBatch, requests: list[tuple[str, SamplingParams]], joins_per_step: int = 1) -> tuple[list[list[int]], list[int]]:
    """Every request through `batch`, `joins_per_step` joining at each step boundary while slots are free.

    Returns each request's tokens and the batch size of every decode step.
    """
    waiting = list(enumerate(requests))
    tokens: dict[int, list[int]] = {}
    index_of = {}
    sizes = []
    while waiting or batch.rows:
        for _ in range(min(joins_per_step, batch.free)):
            if waiting:
                i, (prompt, params) = waiting.pop(0)
                row, _ = batch.add(prompt, params)
                index_of[id(row)] = i
                tokens[i] = row.token_ids
        if batch.rows:
            sizes.append(len(batch.rows))
            batch.step()
    return [tokens[i] for i in range(len(requests))], sizes


@pytest.mark.parametrize("slots,joins", [(4, 1), (4, 4), (3, 2), (1, 1)])
def test_greedy_outputs_under_concurrency_equal_each_request_alone(generator, slots, joins):
    alone = [generator.generate(p, greedy(n)).token_ids for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)]
    got, sizes = run_batch(ContinuousBatch(generator, slots), [(p, greedy(n)) for p, n in zip(PROMPTS, MAX_TOKENS, strict=True)], joins)
    assert got == alone
    assert max(sizes) == slots


def test_joining_and_leaving_at_every_step_boundary(generator):
    # one joins at every boundary and lives 3 steps (its first token comes from the prefill): from the third
    # boundary on, one joins and one leaves at every boundary
    requests = [(PROMPTS[i % len(PROMPTS)], greedy(4)) for i in range(16)]
    alone = [generator.generate(p, params).token_ids for p, params in requests]
    batch = ContinuousBatch(generator, 4)
    waiting, got, boundaries = list(requests), [], []
    while waiting or batch.rows:
        joined = bool(waiting and batch.free)
        if joined:
            got.append(batch.add(*waiting.pop(0))[0])
        left = sum(piece.finish_reason is not None for _, piece in batch.step())
        boundaries.append((joined, left))
    assert [row.token_ids for row in got] == alone
    assert boundaries == [(True, 0)] * 2 + [(True, 1)] * 14 + [(False, 1)] * 2
    assert batch.backend.batch_size == 0 and batch.free == 4


def test_padding_left_by_a_long_sequence_is_dropped_when_the_context_fills(generator):
    # A (100 tokens) leaves early; B (90) decodes to the end of the context: its 10 columns of padding must go
    context = generator.backend.max_context
    a, b = list(range(3, 103)), list(range(200, 290))
    batch = ContinuousBatch(generator, 2)
    row_a, _ = batch.add(a, greedy(3))
    row_b, _ = batch.add(b, greedy(context - len(b)))
    while batch.rows:
        batch.step()
    assert (row_a.finish_reason, row_b.finish_reason) == ("length", "length")
    assert row_b.token_ids == generator.generate(b, greedy(context - len(b))).token_ids


def test_seeded_sampling_repeats_under_concurrency(generator):
    if generator.backend.precision == "int4":
        # On an AVX2-only VM int4's kernels (MatMulNBits, the fused attention) gave a batch's rows logits equal to a lone
        # row's only to rounding (test_quantize's joins-and-leaves test bounds them at 1e-3): a seeded draw at a boundary flipped.
        pytest.skip("int4: a batch's logits equal a row's only to rounding on some CPUs, so a seeded draw may differ")
    requests = [(p, seeded(n + 4, seed)) for seed, (p, n) in enumerate(zip(PROMPTS, MAX_TOKENS, strict=True))]
    alone = [generator.generate(p, params).token_ids for p, params in requests]
    got, _ = run_batch(ContinuousBatch(generator, 4), requests, 2)
    assert got == alone


def test_a_cancelled_sequence_leaves_at_once_and_the_others_continue(generator):
    flag = {"stop": False}
    cancel_me = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, should_stop=lambda: flag["stop"])
    batch = ContinuousBatch(generator, 3)
    others = [batch.add(PROMPTS[0], greedy(12))[0], batch.add(PROMPTS[3], greedy(9))[0]]
    victim, _ = batch.add(PROMPTS[2], cancel_me)
    for _ in range(3):
        batch.step()
    flag["stop"] = True
    pieces = dict((id(r), p) for r, p in batch.step())
    assert pieces[id(victim)].finish_reason == "cancelled" and victim not in batch.rows
    assert len(victim.token_ids) == 4 and batch.free == 1  # its slot is free at once
    newcomer, _ = batch.add(PROMPTS[4], greedy(6))
    while batch.rows:
        batch.step()
    assert [r.token_ids for r in others] == [generator.generate(PROMPTS[0], greedy(12)).token_ids, generator.generate(PROMPTS[3], greedy(9)).token_ids]
    assert newcomer.token_ids == generator.generate(PROMPTS[4], greedy(6)).token_ids


def test_stop_strings_and_finish_reasons_are_as_alone(generator):
    full = generator.generate(PROMPTS[6], greedy(20))
    stop = full.text[5:8]
    params = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=(stop,))
    alone = generator.generate(PROMPTS[6], params)
    batch = ContinuousBatch(generator, 2)
    texts = {}
    row, piece = batch.add(PROMPTS[6], params)
    other, _ = batch.add(PROMPTS[0], greedy(20))
    texts[id(row)] = [piece.text]
    while batch.rows:
        for r, p in batch.step():
            texts.setdefault(id(r), []).append(p.text)
    assert "".join(texts[id(row)]) == alone.text and row.finish_reason == alone.finish_reason == "stop"
    assert other.finish_reason == "length"


def test_prefix_cache_hit_gives_the_same_output_as_a_miss(generator):
    system = "You are a helpful assistant on a small board. Answer briefly and plainly, in one line. "
    first, second = system + "What is Linux?", system + "Name a fox."
    lookups = []
    cache = PrefixCache(1 << 20, min_tokens=8, on_lookup=lookups.append)
    batch = ContinuousBatch(generator, 2, cache)
    row1, _ = batch.add(first, greedy(10))
    row2, _ = batch.add(second, greedy(10))
    while batch.rows:
        batch.step()
    shared = len(generator.encode(system)) - 2
    assert lookups[0] == 0 and lookups[1] >= shared  # a miss, then a hit on the system prompt
    assert row2.token_ids == generator.generate(second, greedy(10)).token_ids
    assert row1.token_ids == generator.generate(first, greedy(10)).token_ids
    again, _ = batch.add(second, greedy(10))  # the whole prompt but its last token is cached
    while batch.rows:
        batch.step()
    assert lookups[2] == len(generator.encode(second)) - 1
    assert again.token_ids == row2.token_ids


def test_prefix_cache_stays_within_its_bytes_least_recently_used_first():
    def kv(n):
        return lambda: [np.zeros((1, 2, n, 4), np.float32)]  # 32 bytes a token

    cache = PrefixCache(32 * 50, min_tokens=2)
    a, b, c = (np.arange(20) + k * 100 for k in range(3))
    cache.store(a, kv(20))
    cache.store(b, kv(20))
    assert cache.lookup(np.concatenate([a, [7]]))[0] == 20  # touch a: b is now the oldest
    cache.store(c, kv(20))
    assert len(cache) == 2 and cache.bytes <= 32 * 50
    assert cache.lookup(np.concatenate([b, [7]])) is None and cache.lookup(np.concatenate([c, [7]]))[0] == 20
    cache.store(np.concatenate([c, [1, 2, 3]]), kv(23))  # extends c: replaces it
    assert len(cache) == 2 and cache.lookup(np.concatenate([c, [1, 2, 9]]))[0] == 22


def test_slots_are_bounded_by_the_backend_and_in_use_ones_refuse_more(generator):
    with pytest.raises(InputError, match="max batch"):
        ContinuousBatch(generator, generator.backend.max_batch + 1)
    batch = ContinuousBatch(generator, 1)
    batch.add(PROMPTS[0], greedy(5))
    with pytest.raises(InputError, match="slots are in use"):
        batch.add(PROMPTS[1], greedy(5))
    with pytest.raises(InputError, match="exceeds the context"):
        ContinuousBatch(generator, 1).add(PROMPTS[0], greedy(generator.backend.max_context))


def test_slot_mode_logits_match_torch_through_joins_and_leaves(tiny_bundle):
    ort, ref = create_backend(tiny_bundle, "ort", threads=1), create_backend(tiny_bundle, "torch", threads=1)
    prompts = [[1, 40, 41, 42], [300, 301, 7, 8, 9, 10, 11, 12, 13], [5]]
    script = ["join 0", "decode", "decode", "join 1", "decode", "join 2", "decode", "decode", "leave 0", "decode",
              "join 0", "decode", "leave 2", "leave 0", "decode", "decode"]
    next_ids = []
    for backend in (ort, ref):
        backend.open_slots(3)
    for action in script:
        verb, _, arg = action.partition(" ")
        if verb == "join":
            got, want = ort.join(prompts[int(arg)]), ref.join(prompts[int(arg)])
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
            next_ids.append(int(want.argmax()))
        elif verb == "leave":
            order = ort.leave([int(arg)])
            assert ref.leave([int(arg)]) == order
            next_ids = [next_ids[i] for i in order]
        else:
            got, want = ort.decode(next_ids), ref.decode(next_ids)
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
            next_ids = [int(t) for t in want.argmax(axis=1)]
        assert ort.lengths == ref.lengths
    assert ort.lengths == [len(prompts[1]) + 7]  # the last rows moved into the holes: prompt 1 stays, after 7 decodes


def test_tensorrt_row_copies_lay_out_rows_as_place_rows_does():
    """The TensorRT backend's device copies, replayed on host bytes, give the same cache as the numpy layout."""
    from merino_edge.runtime.backend import place_rows
    from merino_edge.runtime.backends.tensorrt import row_copies

    rng = np.random.default_rng(0)
    heads, d = 3, 4
    batch, side = rng.standard_normal((3, heads, 5, d)).astype(np.float16), rng.standard_normal((1, heads, 7, d)).astype(np.float16)
    sources = [(False, 2, 3), (False, 0, 5), (True, 0, 7), (False, 1, 1)]
    past = 7
    want = np.full((len(sources), heads, past, d), np.nan, np.float16)
    place_rows(want, [(k, side if s else batch, row, n) for k, (s, row, n) in enumerate(sources)])

    got = np.zeros(want.nbytes, np.uint8)  # the spare buffer after its zero fill
    plan = row_copies([(k, row, (side if s else batch).shape[2], n) for k, (s, row, n) in enumerate(sources)], heads, past, d, 2)
    for (s, _, _), (dst_off, dst_pitch, src_off, src_pitch, width, height) in zip(sources, plan, strict=True):
        src = (side if s else batch).view(np.uint8).ravel()
        for y in range(height):
            got[dst_off + y * dst_pitch : dst_off + y * dst_pitch + width] = src[src_off + y * src_pitch : src_off + y * src_pitch + width]
    np.testing.assert_array_equal(got.view(np.float16).reshape(want.shape), want)
