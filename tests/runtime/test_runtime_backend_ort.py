"""The ONNX Runtime backend against the PyTorch reference, on shared and unshared archs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from merino_edge.bundle import Bundle
from merino_edge.errors import InputError, MissingDependencyError
from merino_edge.export.package import export_bundle
from merino_edge.runtime import Generator, SamplingParams, create_backend
from merino_edge.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def unshared_bundle(tmp_path_factory, tiny_checkpoint_unshared):
    return export_bundle(tiny_checkpoint_unshared, tmp_path_factory.mktemp("unshared") / "bundle", max_context=128, max_batch=4, progress=False)


@pytest.fixture(scope="module", params=["shared", "unshared"])
def bundle(request, tiny_bundle, unshared_bundle):
    return Bundle.load(tiny_bundle) if request.param == "shared" else unshared_bundle


def test_cached_logits_match_torch_at_every_step(bundle):
    ort, ref = create_backend(bundle, "ort", threads=1), create_backend(bundle, "torch", threads=1)
    prompt = np.array([[1, 40, 41, 42, 300, 301, 7]])
    got, want = ort.prefill(prompt), ref.prefill(prompt)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    for _ in range(64):
        token = [int(want.argmax())]
        got, want = ort.decode(token), ref.decode(token)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert ort.past_length == ref.past_length == 7 + 64


def test_greedy_64_tokens_identical_to_torch(bundle):
    tokenizer = Tokenizer(bundle.tokenizer_path)
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    ort = Generator(create_backend(bundle, "ort", threads=1), tokenizer).generate("The quick brown fox", params)
    ref = Generator(create_backend(bundle, "torch", threads=1), tokenizer).generate("The quick brown fox", params)
    assert ort.completion_tokens == 64
    assert ort.token_ids == ref.token_ids
    assert ort.text == ref.text


def test_score_matches_torch_with_padding(bundle):
    ort, ref = create_backend(bundle, "ort", threads=1), create_backend(bundle, "torch", threads=1)
    ids = np.array([[3, 3, 50, 51, 52], [60, 61, 62, 63, 64]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    got, want = ort.score(ids, mask), ref.score(ids, mask)
    assert got.shape == (2, 5, bundle.arch.vocab_size)
    np.testing.assert_allclose(got[0, 2:], want[0, 2:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=0)


def test_fp16_greedy_matches_fp32_on_short_prompt(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    tokenizer = Tokenizer(bundle.tokenizer_path)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    fp32 = Generator(create_backend(bundle, "ort", threads=1, precision="fp32"), tokenizer)
    fp16 = Generator(create_backend(bundle, "ort", threads=1, precision="fp16"), tokenizer)
    assert fp16.backend.precision == "fp16"
    assert fp16.generate("Hello world", params).token_ids == fp32.generate("Hello world", params).token_ids


def test_the_cpu_graph_appends_to_its_cache_where_the_fp16_graph_rewrites_it(tiny_bundle):
    fp32, fp16 = (create_backend(tiny_bundle, "ort", threads=1, precision=p) for p in ("fp32", "fp16"))
    assert fp32.appends and not fp16.appends
    layouts = {}
    for backend in (fp32, fp16):
        backend.prefill(np.arange(1, 8)[None])
        seen = set()
        for _ in range(100):
            backend.decode([5])
            seen.add((id(backend._batch.past[0]), backend._batch.capacity))  # where the next step reads its past, and its stride
        layouts[backend.precision] = len(seen)
    assert layouts["fp16"] == 100  # a new cache every token: past + new, written in full
    assert layouts["fp32"] <= 5  # 7 + 100 tokens in layouts of 32, 64, 96 and 128 columns: laid out again only to grow

@pytest.mark.parametrize("precision", ["fp32", "fp16", "int4"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_a_prompt_run_in_chunks_gives_the_logits_of_one_call(tiny_bundle, tiny_bundle_int4, precision, padding):
    bundle = tiny_bundle_int4 if precision == "int4" else tiny_bundle  # int4: the cache its fused attention writes in place
    whole, chunked = (create_backend(bundle, "ort", threads=1, precision=precision) for _ in range(2))
    chunked.prefill_chunk = 4  # rows end in different chunks of 4 when padded on the right
    rng = np.random.default_rng(6)
    lengths = [11, 3, 8]
    ids = np.full((3, 11), 2, np.int64)
    mask = np.zeros((3, 11), np.int64)
    for r, n in enumerate(lengths):
        cols = slice(11 - n, 11) if padding == "left" else slice(0, n)
        ids[r, cols], mask[r, cols] = rng.integers(4, 500, n), 1
    np.testing.assert_allclose(chunked.prefill(ids, mask), whole.prefill(ids, mask), atol=2e-2 if precision == "fp16" else 1e-4, rtol=0)
    for _ in range(6):
        token = rng.integers(4, 500, 3)
        np.testing.assert_allclose(chunked.decode(token), whole.decode(token), atol=2e-2 if precision == "fp16" else 1e-4, rtol=0)

def test_context_and_batch_limits(tiny_bundle):
    backend = create_backend(tiny_bundle, "ort", threads=1)
    with pytest.raises(InputError, match="decode before prefill"):
        backend.decode([5])
    with pytest.raises(InputError, match="exceeds the context of 128"):
        backend.prefill(np.ones((1, 129), np.int64))
    with pytest.raises(InputError, match="max batch 4"):
        backend.prefill(np.ones((5, 3), np.int64))
    with pytest.raises(InputError, match="token id out of range"):
        backend.prefill(np.array([[1, 512]]))
    backend.prefill(np.ones((1, 127), np.int64))
    backend.decode([5])
    with pytest.raises(InputError, match="context full"):
        backend.decode([5])


def test_create_backend_auto_picks_ort_and_says_why(tiny_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="merino_edge.runtime"):
        backend = create_backend(tiny_bundle)
    assert backend.name == "ort"
    assert backend.precision == "fp32"
    assert "using ONNX Runtime" in caplog.text
    with pytest.raises(InputError, match="choose one of auto, ort, tensorrt, torch"):
        create_backend(tiny_bundle, "vllm")
    with pytest.raises(MissingDependencyError, match="not available in this onnxruntime"):
        create_backend(tiny_bundle, "ort", provider="NoSuchExecutionProvider")
    with pytest.raises(InputError, match="has no int8 graph"):
        create_backend(tiny_bundle, "ort", precision="int8")
