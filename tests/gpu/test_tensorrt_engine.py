"""The TensorRT FP16 engine against ONNX Runtime: run on the board (docs/tensorrt.md), skipped elsewhere.

Tolerance: FP16 logits within TOL = 0.02 (absolute) of ONNX Runtime's FP32 graph.
This tiny model's logits stay within |3.2|; ONNX Runtime's own FP16 graph is
within 0.0025 of FP32 on the CPU, so 0.02 leaves room for TensorRT's kernel
choices while still catching a wrong cache, mask or position.  Greedy parity is
checked exactly over 32 tokens (and a batch of 2 against single rows over 8) on
prompts whose FP32 greedy path never has a top-2 margin below 2 * TOL (a near
tie may legitimately break either way).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorrt", reason="TensorRT is not installed: run these on a Jetson or a CUDA machine (docs/tensorrt.md)")

from merino_edge.bundle import MANIFEST, Bundle  # noqa: E402
from merino_edge.engine_record import ENGINE_FILE, ENGINE_NAME, EngineRecord  # noqa: E402
from merino_edge.errors import IncompatibleError  # noqa: E402
from merino_edge.export.tensorrt import build_engine  # noqa: E402
from merino_edge.fileio import write_json_atomic  # noqa: E402
from merino_edge.jetson.board import detect_board  # noqa: E402
from merino_edge.runtime import Generator, SamplingParams, create_backend  # noqa: E402
from merino_edge.runtime.backends.cuda_memory import available_cuda_bindings  # noqa: E402
from merino_edge.tokenizer import Tokenizer  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

TOL = 0.02
MAX_PROMPT = 16  # small, so that longer prompts exercise the one-token-at-a-time tail
STEPS = 32
PROMPTS = [
    "class Parser:\n    def __init__(self):",
    "x = [1, 2, 3]\nprint(",
    "with open(path) as f:",
    "import os\nimport sys\n",
    "The module provides",
    "if __name__ == '__main__':",
]


@pytest.fixture(scope="module")
def engine_bundle(request, tmp_path_factory):
    """A copy of the tiny bundle (max prompt lowered to 16) with its engine built on this machine.

    $MERINO_GPU_BUNDLE names a tiny bundle exported elsewhere, for a board without torch.
    """
    if not available_cuda_bindings():
        pytest.skip("the TensorRT backend needs pycuda or cuda-python")
    given = os.environ.get("MERINO_GPU_BUNDLE")
    source = Path(given) if given else request.getfixturevalue("tiny_bundle")
    path = shutil.copytree(source, tmp_path_factory.mktemp("trt") / "bundle")
    manifest = Bundle.load(path).manifest
    manifest.max_prompt = MAX_PROMPT
    write_json_atomic(path / MANIFEST, manifest.to_json())
    record = build_engine(path, workspace_mib=256, progress=False)
    return path, record


@pytest.fixture(scope="module")
def backends(engine_bundle):
    path, _ = engine_bundle
    bundle = Bundle.load(path)
    return create_backend(bundle, "tensorrt"), create_backend(bundle, "ort", precision="fp32"), Tokenizer(bundle.tokenizer_path)


def test_build_records_the_engine_and_keeps_the_timing_cache(engine_bundle):
    import tensorrt as trt

    path, record = engine_bundle
    bundle = Bundle.load(path)  # verifies the engine's sha256 too
    assert EngineRecord.from_json(bundle.engine_record) == record
    assert bundle.engine_path(ENGINE_NAME) == path / ENGINE_FILE
    assert record.host.tensorrt_version == trt.__version__
    board = detect_board()
    assert record.host.board == (board.model if board else None)
    assert record.onnx_sha256 == bundle.manifest.files[bundle.onnx_path("fp16").name]
    assert (record.max_prompt, record.max_context, record.max_batch) == (MAX_PROMPT, bundle.max_context, bundle.max_batch)
    cache = path / "engines" / "tensorrt.timing.cache"
    assert cache.stat().st_size > 0


def test_rebuild_reuses_the_timing_cache(engine_bundle, tmp_path):
    path, first = engine_bundle
    copy = shutil.copytree(path, tmp_path / "again")
    second = build_engine(copy, workspace_mib=256, max_batch=2, progress=False)
    assert second.max_batch == 2 and second.host == first.host
    assert (copy / "engines" / "tensorrt.timing.cache").stat().st_size >= (path / "engines" / "tensorrt.timing.cache").stat().st_size


def _teacher_forced(backend, ids, tokens):
    """Logits after the prompt and after each of `tokens` fed in turn."""
    out = [backend.prefill(ids)]
    for token in tokens:
        out.append(backend.decode(np.array([token])))
    return np.stack(out)


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_fp16_logits_within_tolerance_of_ort_fp32(backends, prompt):
    trt_backend, ort_backend, tokenizer = backends
    ids = np.array([tokenizer.encode(prompt * 3)])  # longer than MAX_PROMPT: the tail goes one token at a time
    assert ids.shape[1] > MAX_PROMPT
    reference = Generator(ort_backend, tokenizer).generate(ids[0].tolist(), SamplingParams(max_tokens=STEPS, temperature=0, ignore_eos=True))
    expected = _teacher_forced(ort_backend, ids, reference.token_ids)
    got = _teacher_forced(trt_backend, ids, reference.token_ids)
    assert np.abs(got - expected).max() <= TOL
    top2 = np.sort(expected, axis=-1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 2 * TOL
    assert (got.argmax(-1) == expected.argmax(-1))[clear].all()


def _clear_greedy_path(ort_backend, tokenizer, prompt: str, steps: int) -> bool:
    """True when ONNX Runtime's FP32 greedy path from `prompt` never has a top-2 margin within 2 * TOL.

    Any two runs within TOL of FP32 (an FP16 engine at batch 1 or 2) then pick the same tokens.
    """
    greedy = SamplingParams(max_tokens=steps, temperature=0, ignore_eos=True)
    ids = np.array([tokenizer.encode(prompt)])
    path = _teacher_forced(ort_backend, ids, Generator(ort_backend, tokenizer).generate(prompt, greedy).token_ids[:-1])
    top2 = np.sort(path, axis=-1)[..., -2:]
    return (top2[..., 1] - top2[..., 0]).min() > 2 * TOL


def test_greedy_parity_with_onnx_runtime_over_32_tokens(backends):
    trt_backend, ort_backend, tokenizer = backends
    greedy = SamplingParams(max_tokens=STEPS, temperature=0, ignore_eos=True)
    compared = 0
    for prompt in PROMPTS:
        if not _clear_greedy_path(ort_backend, tokenizer, prompt, STEPS):
            continue  # a near tie on the way: either token is right
        expected = Generator(ort_backend, tokenizer).generate(prompt, greedy)
        got = Generator(trt_backend, tokenizer).generate(prompt, greedy)
        assert got.token_ids == expected.token_ids and got.text == expected.text
        assert len(got.token_ids) == STEPS
        compared += 1
    assert compared >= 1, "no prompt with a clear greedy path to compare"


def test_padded_batch_equals_single_rows(backends):
    trt_backend, ort_backend, tokenizer = backends
    clear = [p for p in PROMPTS if _clear_greedy_path(ort_backend, tokenizer, p, 8)]  # FP16 at batch 2 and 1 may break a near tie apart
    by_length = {len(tokenizer.encode(p)): p for p in clear}
    assert len(by_length) >= 2, "fewer than two prompts of different lengths with a clear greedy path"
    prompts = [by_length[min(by_length)], by_length[max(by_length)]]  # the shorter one is padded
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    batch = Generator(trt_backend, tokenizer).generate_batch(prompts, params)
    for prompt, completion in zip(prompts, batch, strict=True):
        assert completion.token_ids == Generator(trt_backend, tokenizer).generate(prompt, params).token_ids


def test_score_matches_ort_and_leaves_the_cache_alone(backends):
    trt_backend, ort_backend, tokenizer = backends
    ids = np.array([tokenizer.encode(PROMPTS[1])[:MAX_PROMPT]])
    first = trt_backend.prefill(ids)
    scored = trt_backend.score(ids)
    assert np.abs(scored - ort_backend.score(ids)).max() <= TOL
    assert np.abs(scored[:, -1] - first).max() <= TOL
    after = trt_backend.decode(first.argmax(-1))  # the cache survived score()
    ort_backend.prefill(ids)
    assert np.abs(after - ort_backend.decode(first.argmax(-1))).max() <= TOL


def test_a_backend_closes_from_another_thread_and_a_new_one_loads(engine_bundle):
    path, _ = engine_bundle
    backend = create_backend(path, "tensorrt")
    failures = []

    def close() -> None:
        try:
            backend.close()
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    closer = threading.Thread(target=close)
    closer.start()
    closer.join()
    assert failures == []
    again = create_backend(path, "tensorrt")
    assert again.prefill(np.array([[5, 6, 7]])).shape == (1, again.vocab_size)
    again.close()


def test_engine_from_another_tensorrt_version_is_refused(engine_bundle, tmp_path):
    path, record = engine_bundle
    copy = shutil.copytree(path, tmp_path / "foreign")
    foreign = dataclasses.replace(record, host=dataclasses.replace(record.host, tensorrt_version="8.6.1"))
    Bundle.load(copy).add_engine(ENGINE_FILE, foreign.to_json(), name=ENGINE_NAME)
    with pytest.raises(IncompatibleError, match=r"TensorRT 8\.6\.1 built it.*run `merino-edge build .*` again"):
        create_backend(copy, "tensorrt")
