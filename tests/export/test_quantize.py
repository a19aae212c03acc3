"""Weight-only int8 / int4 graphs: what export writes, what they cost in quality, and how the runtime picks them."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from local_text import training_texts
from onnx import numpy_helper
from shared_paths import EVAL_FIXTURES

from merino_edge.bundle import MANIFEST, Bundle, file_sha256
from merino_edge.cli import main
from merino_edge.errors import InputError
from merino_edge.export.package import export_bundle
from merino_edge.export.quality import EVAL_SEQ_LEN, EVAL_TOKENS
from merino_edge.export.quantize import quantize_graph
from merino_edge.runtime import Generator, SamplingParams, create_backend
from merino_edge.runtime.scheduler import slot_bytes
from merino_edge.tokenizer import Tokenizer
from merino_edge.training.data import held_out_windows

# Greedy text of int8 must equal fp32's; a difference is allowed only where fp32's
# top two logits were within NEAR_TIE of each other (the quantization noise of the
# logits on this model is of that order), and the step counted is the first one.
NEAR_TIE = 0.05
GREEDY_TOKENS = 32


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, tiny_tokenizer):
    """A tiny MeRino trained for a few hundred thousand tokens; its checkpoint keeps the token shards (data/, with a validation split)."""
    from merino_edge.arch import ArchSpec, Block
    from merino_edge.training.trainer import TrainConfig, train

    work = tmp_path_factory.mktemp("trained")
    text = work / "train.txt"
    text.write_text("\n\n".join(training_texts(400_000)), encoding="utf-8")
    arch = ArchSpec(blocks=(Block(64, 2.0, 2), Block(128, 1.5, 2)), vocab_size=512, proj_dim=96, max_positions=128)
    cfg = TrainConfig(
        arch=arch, data=(str(text),), out=work / "ckpt", tokenizer=tiny_tokenizer, text_unit="paragraph", val_fraction=0.05,
        seq_len=64, batch_tokens=1024, micro_batch=16, max_steps=80, lr=4e-3, min_lr=4e-4, eval_every=10**6,
        eval_tokens=2048, save_every=10**6, threads=2, progress=False,
    )  # fmt: skip
    return Path(train(cfg).out_dir)


@pytest.fixture(scope="module")
def quantized_bundle(tmp_path_factory, trained_checkpoint):
    out = tmp_path_factory.mktemp("qbundle") / "bundle"
    held_out = held_out_windows(trained_checkpoint, Tokenizer(trained_checkpoint / "tokenizer.model"), seq_len=EVAL_SEQ_LEN, tokens=EVAL_TOKENS)
    export_bundle(trained_checkpoint, out, quantize=["int8", "int4"], held_out=held_out, max_context=128, max_batch=4, progress=False)
    return out


def _initializers(path):
    return onnx.load(str(path), load_external_data=False).graph


def test_export_writes_hashed_int8_and_int4_graphs(quantized_bundle):
    bundle = Bundle.load(quantized_bundle)
    assert bundle.precisions == ["fp32", "int8", "int4"]
    sizes = {}
    for precision in ("fp32", "int8", "int4"):
        graph = bundle.manifest.graphs[precision]
        for name in (graph["file"], graph["data_file"]):
            assert bundle.manifest.files[name] == file_sha256(quantized_bundle / name)
        sizes[precision] = (quantized_bundle / graph["data_file"]).stat().st_size
    # the position table (128 x 96 fp32) stays fp32; everything else shrinks about 4x / 8x plus scales
    assert sizes["int8"] < 0.4 * sizes["fp32"]
    assert sizes["int4"] < 0.7 * sizes["int8"]
    assert bundle.manifest.graphs["int4"]["quantization"]["bits"] == 4


def test_quantized_graph_stores_shared_and_tied_weights_once(quantized_bundle):
    fp32, int4 = _initializers(quantized_bundle / "model.onnx"), _initializers(quantized_bundle / "model.int4.onnx")
    fp32_weights = {t.name for t in fp32.initializer if len(t.dims) == 2 and t.name.startswith("onnx::MatMul")}
    ops = Counter(n.op_type for n in int4.node)
    assert ops["MatMul"] == 0 and ops["MatMulNBits"] == Counter(n.op_type for n in fp32.node)["MatMul"] - 4 * ops["GroupQueryAttention"]  # 4 are attention's
    packed = [t for t in int4.initializer if t.name.endswith("_Q4")]
    assert {t.name.removesuffix("_Q4") for t in packed} == fp32_weights  # one quantized copy per distinct weight
    assert len({t.name for t in int4.initializer}) == len(int4.initializer)
    assert ops["GatherBlockQuantized"] == 1  # the token lookup reads the quantized head
    assert not any(t.name in fp32_weights or t.name.endswith("embed_tokens.weight") for t in int4.initializer)


def test_quantized_graphs_attend_with_one_fused_node_per_layer_over_an_int8_cache(quantized_bundle):
    bundle = Bundle.load(quantized_bundle)
    graph = onnx.load(str(quantized_bundle / "model.int4.onnx")).graph
    executions = bundle.arch.num_layer_executions
    fused = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(fused) == executions and {n.domain for n in fused} == {"com.microsoft"}
    assert not [n for n in graph.node if n.op_type in ("Softmax", "Concat") or any(i.startswith("past.") for i in n.input) and n not in fused]
    scales = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_scale")}
    assert [v.shape for v in scales.values()] == [(1, h, 1, 64) for h in bundle.arch.layer_heads() for _ in ("key", "value")]
    assert all((v > 0).all() for v in scales.values())
    entry = bundle.manifest.graphs["int4"]
    assert entry["io_dtype"] == {"kv": "int8", "logits": "float32"} and entry["quantization"]["kv_cache"]["calibration_tokens"] > 0


def test_quantized_graphs_write_their_int8_cache_in_place(quantized_bundle):
    bundle = Bundle.load(quantized_bundle)
    fp32, int4 = (create_backend(bundle, "ort", threads=1, precision=p) for p in ("fp32", "int4"))
    assert (fp32.cache_form, fp32.kv_dtype, int4.cache_form, int4.kv_dtype) == ("append", np.float32, "shared", np.int8)
    assert slot_bytes(int4, bundle.arch) * 4 == slot_bytes(fp32, bundle.arch) == bundle.max_context * bundle.arch.kv_cache_bytes_per_token(4)
    # decoding from the cache the graph wrote gives the logits of the same graph run over the whole text at once
    ids = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    for backend in (fp32, int4):
        steps = [backend.prefill(np.array([ids[:6]]))] + [backend.decode([token]) for token in ids[6:-1]]
        whole = backend.score(np.array([ids[:-1]]))[0, 5:]
        np.testing.assert_allclose(np.stack(steps)[:, 0], whole, atol=1e-3, rtol=0)
    # and a left-padded row of a batch gets the logits it gets alone
    padded = int4.prefill(np.array([[0, 0, *ids[:4]], ids[:6]]), np.array([[0, 0, 1, 1, 1, 1], [1] * 6]))
    np.testing.assert_allclose(padded[0], int4.prefill(np.array([ids[:4]]))[0], atol=1e-4, rtol=0)


def test_int8_cache_slots_through_joins_and_leaves_give_each_sequence_its_logits_alone(quantized_bundle):
    backend = create_backend(quantized_bundle, "ort", threads=1, precision="int4")
    backend.open_slots(3)
    texts = {0: [1, 40, 41, 42], 1: [300, 301, 7, 8, 9, 10, 11, 12, 13], 2: [5]}
    rows: list[int] = []  # which text each slot row holds

    def check(logits, row_texts):
        for got, text in zip(logits, row_texts, strict=True):
            np.testing.assert_allclose(got, backend.score(np.array([texts[text]]))[0, -1], atol=1e-3, rtol=0)

    for action in ["join 0", "decode", "join 1", "decode", "join 2", "decode", "leave 0", "decode", "join 0", "decode", "leave 1", "decode"]:
        verb, _, arg = action.partition(" ")
        if verb == "join":
            rows.append(int(arg))
            check([backend.join(texts[int(arg)])], [int(arg)])
        elif verb == "leave":
            order = backend.leave([rows.index(int(arg))])
            rows = [rows[i] for i in order]
        else:
            for text in rows:
                texts[text] = [*texts[text], 7 + len(texts[text]) % 50]
            check(backend.decode([texts[t][-1] for t in rows]), rows)


def test_the_int8_cache_is_calibrated_for_positions_beyond_the_held_out_windows(tmp_path, tiny_checkpoint, tiny_tokenizer):
    """Held-out windows are shorter than the context: keys and values at later positions must not saturate the cache.

    The model's later position embeddings are scaled up, so that those positions reach further; calibrated on
    the windows' own positions (0..31) 1.0 % of this text's cache values saturate, at positions spread over the context 0.3 %.
    """
    import torch

    from merino_edge.export.quality import graph_session
    from merino_edge.model import MeRinoForCausalLM

    ckpt = shutil.copytree(tiny_checkpoint, tmp_path / "ckpt")
    model = MeRinoForCausalLM.from_pretrained(ckpt)
    with torch.no_grad():
        model.model.embed_positions.weight[64:] *= 6
    model.save_pretrained(ckpt)
    ids = Tokenizer(tiny_tokenizer).encode("\n\n".join(training_texts(20_000)))
    windows = np.array(ids[: 32 * 33], np.int64).reshape(32, 33)  # 32-token windows, the first 8 calibrate
    bundle = export_bundle(ckpt, tmp_path / "bundle", quantize=["int8"], held_out=(windows, "local text"), max_context=128, progress=False)
    scales = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(bundle.path / "model.int8.onnx")).graph.initializer if t.name.endswith("_scale")}
    session = graph_session(bundle.path / "model.onnx")
    pasts = [i for i in session.get_inputs() if i.name.startswith("past.")]
    feeds = {"input_ids": np.array([ids[3000:3128]]), "position_ids": np.arange(128)[None], "attention_mask": np.ones((1, 128), np.int64),
             "logits_to_keep": np.array([0])}  # fmt: skip
    feeds.update({i.name: np.zeros((1, i.shape[1], 0, 64), np.float32) for i in pasts})
    values = session.run([o.name for o in session.get_outputs() if o.name.startswith("present.")], feeds)
    saturated = np.mean([(np.abs(v) > 127 * scales[f"{p.name}_scale"] * 1.0001).mean() for p, v in zip(pasts, values, strict=True)])
    assert saturated < 0.005


def test_a_graph_not_in_the_append_form_is_refused_by_quantize(tiny_bundle, tmp_path):
    graph = tmp_path / "concat.onnx"
    shutil.copy(tiny_bundle / "model.fp16.onnx", graph)
    shutil.copy(tiny_bundle / "model.fp16.onnx.data", tmp_path / "model.fp16.onnx.data")
    with pytest.raises(InputError, match="not the append form"):
        quantize_graph(graph, tmp_path / "out.onnx", "int8", {})


def test_held_out_perplexity_is_measured_and_bounded(quantized_bundle):
    graphs = Bundle.load(quantized_bundle).manifest.graphs
    int8, int4 = graphs["int8"]["quality"], graphs["int4"]["quality"]
    assert int8["fp32_perplexity"] == int4["fp32_perplexity"] < 300  # trained: well below the uniform 512 of its vocabulary
    assert "validation split" in int8["data"] and int8["tokens"] >= 1024
    assert abs(int8["increase"]) <= int8["max_increase"] == 0.01
    assert abs(int4["increase"]) <= int4["max_increase"] == 0.05
    assert int4["perplexity"] != int4["fp32_perplexity"]  # it measured a different graph


def test_int8_greedy_text_equals_fp32_unless_after_a_near_tie(quantized_bundle, tiny_tokenizer):
    ids = Generator.from_bundle(quantized_bundle, "ort", threads=2, precision="fp32").tokenizer.encode("The return statement")
    backends = {p: create_backend(quantized_bundle, "ort", threads=2, precision=p) for p in ("fp32", "int8")}
    logits = {p: b.prefill(np.array([ids])) for p, b in backends.items()}
    for step in range(GREEDY_TOKENS):
        fp32, int8 = logits["fp32"][0], logits["int8"][0]
        if int(np.argmax(fp32)) != int(np.argmax(int8)):
            top2 = np.sort(fp32)[-2:]
            assert top2[1] - top2[0] < NEAR_TIE, f"step {step}: int8 picked another token with fp32's margin {top2[1] - top2[0]:.3f}"
            return
        token = np.array([int(np.argmax(fp32))])
        logits = {p: b.decode(token) for p, b in backends.items()}


def test_auto_runs_the_smallest_graph_within_its_bound(quantized_bundle, tmp_path):
    assert create_backend(quantized_bundle, "ort", threads=1).precision == "int4"
    assert create_backend(quantized_bundle, "ort", threads=1, precision="auto").precision == "int4"
    copy = shutil.copytree(quantized_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["graphs"]["int4"]["quality"]["max_increase"] = -1.0  # nothing passes this bound
    (copy / MANIFEST).write_text(json.dumps(manifest))
    precision, why = Bundle.load(copy).cpu_precision()
    assert precision == "int8" and "int4: perplexity" in why and "over its" in why


def test_generate_runs_the_int4_graph(quantized_bundle):
    generator = Generator.from_bundle(quantized_bundle, "ort", threads=2, precision="int4")
    assert generator.backend.precision == "int4"
    text = generator.generate("The return statement", SamplingParams(max_tokens=8, temperature=0)).text
    assert text.strip()


def test_tampered_quantized_graph_is_refused(quantized_bundle, tmp_path):
    copy = shutil.copytree(quantized_bundle, tmp_path / "bundle")
    with open(copy / "model.int4.onnx.data", "r+b") as f:  # one bit of one packed weight
        f.seek(1000)
        byte = f.read(1)[0]
        f.seek(1000)
        f.write(bytes([byte ^ 0x10]))
    with pytest.raises(InputError, match=r"model\.int4\.onnx\.data is damaged"):
        create_backend(copy, "ort", threads=1, precision="int4")


@pytest.mark.parametrize("command", ["generate", "bench", "eval", "doctor", "serve"])
def test_precision_int4_on_a_bundle_without_it_exits_2_with_one_line(tiny_bundle, command, capsys):
    extra = {"generate": ["--prompt", "x"], "bench": ["--new-tokens", "2"], "eval": ["--tasks", "copa", "--data-dir", str(EVAL_FIXTURES)], "doctor": [], "serve": ["--metrics-addr", "off"]}
    assert main([command, str(tiny_bundle), "--precision", "int4", *extra[command]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no int4 graph" in err[0] and "merino-edge quantize" in err[0]


def test_quantize_command_adds_a_graph_to_an_existing_bundle(tiny_bundle, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("\n\n".join(training_texts(20_000)), encoding="utf-8")
    assert main(["quantize", str(copy), "--int8", "--eval-data", str(held_out), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "int8:" in out and "held-out perplexity" in out
    bundle = Bundle.load(copy)
    assert bundle.precisions == ["fp32", "fp16", "int8"]
    assert bundle.manifest.graphs["int8"]["quality"]["data"] == str(held_out)


def test_quantize_without_held_out_data_exits_2_with_one_line(tiny_bundle, tmp_path, capsys):
    copy = shutil.copytree(tiny_bundle, tmp_path / "bundle")
    assert main(["quantize", str(copy), "--int4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--eval-data" in err[0]
    assert Bundle.load(copy).precisions == ["fp32", "fp16"]
