"""The lm-eval adapter on the runtime backends: scores agree with the torch model, perplexity is exact."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lm_eval.api.instance import Instance
from shared_paths import EVAL_FIXTURES

from merino_edge.evaluation.run import evaluate
from merino_edge.runtime import Generator, SamplingParams
from merino_edge.runtime.lm_eval_adapter import MerinoEdgeLM

TEXT = (
    "The quick brown fox jumps over the lazy dog. Python's standard library is very extensive, "
    "offering a wide range of facilities as indicated by the long table of contents listed below."
)


def _request(kind: str, args: tuple) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@pytest.fixture(scope="module")
def uniform_bundle(tmp_path_factory, tiny_checkpoint):
    """The tiny model with its final LayerNorm zeroed: every logit is 0, so p(token) = 1/V everywhere."""
    import torch
    from transformers import AutoModelForCausalLM

    import merino_edge.model  # noqa: F401
    from merino_edge.export.package import export_bundle
    from merino_edge.training.checkpoint import save_model_dir

    model = AutoModelForCausalLM.from_pretrained(str(tiny_checkpoint)).eval()
    with torch.no_grad():
        model.model.norm.weight.zero_()
        model.model.norm.bias.zero_()
    ckpt = tmp_path_factory.mktemp("uniform-ckpt")
    save_model_dir(model, tiny_checkpoint / "tokenizer.model", ckpt)
    out = tmp_path_factory.mktemp("uniform-bundle") / "bundle"
    export_bundle(ckpt, out, fp32=True, fp16=False, max_context=16, max_batch=4, progress=False)
    return out


@pytest.mark.slow
def test_accuracies_equal_between_onnx_runtime_and_torch(tiny_bundle):
    reports = {b: evaluate(tiny_bundle, "copa,piqa,winogrande", backend=b, limit=5, data_dir=EVAL_FIXTURES, batch_size=4) for b in ("ort", "torch")}
    ort, torch_ = reports["ort"], reports["torch"]
    assert (ort.backend, torch_.backend) == ("ort", "torch")
    assert [(r.task, r.metric, r.samples) for r in ort.rows] == [(r.task, r.metric, r.samples) for r in torch_.rows]
    assert {r.task for r in ort.rows} == {"copa", "piqa", "winogrande"}
    assert all(r.samples == 5 for r in ort.rows)  # the limit, below the fixtures' six items
    assert {(r.task, r.metric): r.value for r in ort.rows} == {(r.task, r.metric): r.value for r in torch_.rows}


def test_loglikelihoods_match_torch_and_flag_greedy_continuations(tiny_bundle):
    ort = MerinoEdgeLM(tiny_bundle, "ort", batch_size=3)
    reference = MerinoEdgeLM(tiny_bundle, "torch")
    pairs = [("The quick brown fox", " jumps over the lazy dog."), ("", "Hello world"), (TEXT * 3, " and more.")]  # the last one is cut to the context
    requests = [_request("loglikelihood", p) for p in pairs]
    got = ort.loglikelihood(requests, disable_tqdm=True)
    want = reference.loglikelihood(requests, disable_tqdm=True)
    assert np.allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-4, atol=1e-3)
    assert all(g[0] < 0 for g in got)

    context = ort.tok_encode("The quick brown fox")
    greedy = Generator(ort.runtime, ort.tokenizer).generate(context, SamplingParams(max_tokens=4, temperature=0)).token_ids
    other = [*greedy[:-1], (greedy[-1] + 1) % ort.runtime.vocab_size]
    (_, is_greedy), (_, not_greedy) = ort._loglikelihood_tokens([(None, context, greedy), (None, context, other)], disable_tqdm=True)
    assert is_greedy and not not_greedy


def test_rolling_loglikelihood_of_uniform_logits_gives_vocab_size_perplexity(uniform_bundle):
    lm = MerinoEdgeLM(uniform_bundle, "ort")
    n_tokens = len(lm.tok_encode(TEXT))
    assert n_tokens > 3 * lm.max_length  # several rolling windows of the 16-token context
    (ll,) = lm.loglikelihood_rolling([_request("loglikelihood_rolling", (TEXT,))], disable_tqdm=True)
    vocab = lm.runtime.vocab_size
    assert ll == pytest.approx(-n_tokens * math.log(vocab), rel=1e-9)
    assert math.exp(-ll / n_tokens) == pytest.approx(vocab, rel=1e-9)


def test_generate_until_stops_at_the_stop_string_and_matches_the_generator(tiny_bundle):
    lm = MerinoEdgeLM(tiny_bundle, "ort")
    prompt = "Python is"
    free = Generator(lm.runtime, lm.tokenizer).generate(lm.tok_encode(prompt), SamplingParams(max_tokens=12, temperature=0)).text
    (text,) = lm.generate_until([_request("generate_until", (prompt, {"until": [], "max_gen_toks": 12}))], disable_tqdm=True)
    assert text == free
    assert free.strip(), "the tiny model should say something"
    stop = free.strip()[:1]
    (cut,) = lm.generate_until([_request("generate_until", (prompt, {"until": [stop], "max_gen_toks": 12}))], disable_tqdm=True)
    assert cut == free[: free.index(stop)]


def test_registered_with_lm_eval_and_built_from_model_args(tiny_bundle):
    from lm_eval.api.registry import get_model

    lm = get_model("merino-edge").create_from_arg_string(f"bundle={tiny_bundle},backend=ort,batch_size=2", {"batch_size": None, "device": "cpu"})
    assert isinstance(lm, MerinoEdgeLM)
    assert (lm.batch_size, lm.runtime.name, lm.max_length) == (2, "ort", 128)
