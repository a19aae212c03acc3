import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from tiny_models import ARCHS, tiny_model

from merino_edge.errors import InputError
from merino_edge.export.onnx import check_operators, export_layer, export_onnx, graph_names


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_graph(sess, arch, ids, mask, positions, past, kv_dtype=np.float32, keep=None):
    """One call of the exported graph; logits of every column unless `keep`, and the cache after it.

    `past` is the cache after the previous call (or None).  The cache after a call is what the graph
    returns: past + new in the concat form, and the past followed by the new columns in the append form.
    """
    if past is None:
        past = [np.zeros((ids.shape[0], h, 0, arch.head_dim), kv_dtype) for h in arch.layer_heads() for _ in "kv"]
    keep = np.arange(ids.shape[1]) if keep is None else np.asarray(keep, np.int64)
    feed = {"input_ids": ids, "position_ids": positions, "attention_mask": mask, "logits_to_keep": keep}
    feed.update(zip(graph_names(arch)[0][4:], past, strict=True))
    logits, *present = sess.run(None, feed)
    if present[0].shape[2] == ids.shape[1] != mask.shape[1]:  # the append form with a past: the new columns alone
        present = [np.concatenate([p, new], axis=2) for p, new in zip(past, present, strict=True)]
    return logits, present


def ort_greedy(sess, arch, prompt, steps, kv_dtype=np.float32):
    """Prompt then `steps` cached decode steps; returns the tokens and the logits of every call."""
    ids = np.asarray([prompt], dtype=np.int64)
    n = ids.shape[1]
    logits, past = run_graph(sess, arch, ids, np.ones((1, n), np.int64), np.arange(n)[None], None, kv_dtype)
    tokens, all_logits = [], [logits[0, -1]]
    for step in range(steps):
        tokens.append(int(all_logits[-1].argmax()))
        pos = n + step
        logits, past = run_graph(
            sess, arch, np.asarray([[tokens[-1]]]), np.ones((1, pos + 1), np.int64), np.asarray([[pos]]), past, kv_dtype
        )
        all_logits.append(logits[0, -1])
    return tokens, all_logits


@pytest.fixture(scope="module", params=[("shared", False), ("shared", True), ("unshared", False), ("unshared", True)], ids=lambda p: f"{p[0]}-{'append' if p[1] else 'concat'}")
def exported(request, tmp_path_factory):
    name, append_kv = request.param
    arch = ARCHS[name]
    model = tiny_model(arch, seed=5)
    path = export_onnx(model, tmp_path_factory.mktemp(f"{name}-{'append' if append_kv else 'concat'}") / "model.onnx", append_kv=append_kv)
    return arch, model, path


def test_prompt_and_every_cached_step_match_torch(exported):
    arch, model, path = exported
    prompt = list(np.random.default_rng(0).integers(4, arch.vocab_size, 7))
    tokens, ort_logits = ort_greedy(session(path), arch, prompt, steps=6)
    with torch.no_grad():
        full = model(torch.tensor([prompt + tokens]), use_cache=False).logits[0].numpy()
    # call k of the graph predicts position len(prompt) - 1 + k of the uncached forward
    expected = full[len(prompt) - 1 :]
    np.testing.assert_allclose(np.stack(ort_logits), expected, atol=1e-4, rtol=0)


def test_left_padded_batch_matches_each_row_alone(exported):
    arch, model, path = exported
    sess = session(path)
    rng = np.random.default_rng(1)
    rows = [list(rng.integers(4, arch.vocab_size, 3)), list(rng.integers(4, arch.vocab_size, 8))]
    ids = np.full((2, 8), 3, np.int64)
    mask = np.zeros((2, 8), np.int64)
    for r, row in enumerate(rows):
        ids[r, 8 - len(row) :], mask[r, 8 - len(row) :] = row, 1
    positions = np.clip(mask.cumsum(1) - 1, 0, None)
    logits, past = run_graph(sess, arch, ids, mask, positions, None)
    nxt = logits[:, -1].argmax(-1)
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step_logits, _ = run_graph(sess, arch, nxt[:, None], mask, positions[:, -1:] + 1, past)
    for r, row in enumerate(rows):
        with torch.no_grad():
            alone = model(torch.tensor([row + [int(nxt[r])]]), use_cache=False).logits[0].numpy()
        np.testing.assert_allclose(logits[r, 8 - len(row) :], alone[:-1], atol=1e-4, rtol=0)
        np.testing.assert_allclose(step_logits[r, 0], alone[-1], atol=1e-4, rtol=0)


def test_logits_to_keep_returns_only_those_columns_with_the_same_values(exported):
    arch, _, path = exported
    sess = session(path)
    ids = np.random.default_rng(2).integers(4, arch.vocab_size, (2, 9))
    mask, positions = np.ones((2, 9), np.int64), np.arange(9)[None].repeat(2, 0)
    every, present_all = run_graph(sess, arch, ids, mask, positions, None)
    last, present_last = run_graph(sess, arch, ids, mask, positions, None, keep=[8])
    some, _ = run_graph(sess, arch, ids, mask, positions, None, keep=[2, 8])
    assert every.shape == (2, 9, arch.vocab_size) and last.shape == (2, 1, arch.vocab_size)
    np.testing.assert_allclose(last[:, 0], every[:, 8], atol=1e-5, rtol=0)
    np.testing.assert_allclose(some, every[:, [2, 8]], atol=1e-5, rtol=0)
    for a, b in zip(present_all, present_last, strict=True):  # the cache does not depend on what is kept
        np.testing.assert_array_equal(a, b)


def test_graph_io_follows_the_contract(exported):
    arch, _, path = exported
    graph = onnx.load(str(path), load_external_data=False).graph
    appends = "append" in path.parent.name
    inputs, outputs = graph_names(arch)
    assert [i.name for i in graph.input] == inputs
    assert [o.name for o in graph.output] == outputs

    def shape(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    by_name = {v.name: v for v in [*graph.input, *graph.output]}
    assert shape(by_name["input_ids"]) == ["batch", "seq"]
    assert shape(by_name["attention_mask"]) == ["batch", "total"]
    assert shape(by_name["logits_to_keep"]) == ["keep"]
    assert shape(by_name["logits"]) == ["batch", "keep", arch.vocab_size]
    for i, heads in enumerate(arch.layer_heads()):
        assert shape(by_name[f"past.{i}.key"]) == ["batch", heads, "past", 64]
        assert shape(by_name[f"present.{i}.value"]) == ["batch", heads, "seq" if appends else "total", 64]
    assert {o.type.tensor_type.elem_type for o in graph.output} == {TensorProto.FLOAT}
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.INT64


def test_weights_are_stored_once_in_one_external_file(exported):
    arch, _, path = exported
    model = onnx.load(str(path), load_external_data=False)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert all(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    # every weight is perturbed, so any duplicate (a shared layer per execution, the tied head) would add bytes
    assert (path.parent / "model.onnx.data").stat().st_size == 4 * arch.params()
    onnx.checker.check_model(str(path), full_check=True)
    check_operators(path)  # raises on anything TensorRT could not take


def test_the_append_form_reads_its_past_in_place_and_ignores_masked_columns_beyond_it(tmp_path):
    arch = ARCHS["unshared"]
    model = tiny_model(arch, seed=5)
    path = export_onnx(model, tmp_path / "model.onnx", append_kv=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    pasts = set(graph_names(arch)[0][4:])
    assert not [n.name for n in graph.node if n.op_type == "Concat" and pasts & set(n.input)]  # the cache is never copied
    sess, rng = session(path), np.random.default_rng(4)
    ids = rng.integers(4, arch.vocab_size, (1, 6))
    _, past = run_graph(sess, arch, ids, np.ones((1, 6), np.int64), np.arange(6)[None], None)
    step = rng.integers(4, arch.vocab_size, (1, 1))
    want, _ = run_graph(sess, arch, step, np.ones((1, 7), np.int64), np.asarray([[6]]), past)
    # the same past laid out with 5 more columns of junk behind it, hidden by the mask
    padded = [np.concatenate([p, rng.normal(0, 10, (*p.shape[:2], 5, p.shape[3])).astype(np.float32)], axis=2) for p in past]
    mask = np.concatenate([np.ones((1, 6)), np.zeros((1, 5)), np.ones((1, 1))], axis=1).astype(np.int64)
    feed = {"input_ids": step, "position_ids": np.asarray([[6]]), "attention_mask": mask, "logits_to_keep": np.asarray([0])}
    feed.update(zip(graph_names(arch)[0][4:], padded, strict=True))
    got, *new = sess.run(None, feed)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert [n.shape for n in new] == [(1, h, 1, arch.head_dim) for h in arch.layer_heads() for _ in "kv"]


@pytest.fixture(scope="module")
def memorized(tmp_path_factory):
    """A tiny model trained to continue one fixed sequence, exported in FP32 and FP16."""
    arch = ARCHS["shared"]
    model = tiny_model(arch, seed=7).train()
    sequence = torch.tensor(np.random.default_rng(3).integers(4, arch.vocab_size, 16))[None]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):  # about 80 steps; the thread count earlier tests leave changes the rounding, and so the path
        loss = model(sequence, labels=sequence, use_cache=False).loss
        if loss.item() < 0.05:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    out = tmp_path_factory.mktemp("memorized")
    return arch, sequence[0].tolist(), export_onnx(model, out / "model.onnx"), export_onnx(model, out / "model.fp16.onnx", fp16=True)


@pytest.mark.slow  # trains the tiny model for about 80 steps first
def test_fp16_graph_keeps_fp32_logits_and_its_greedy_tokens_match_fp32(memorized):
    arch, sequence, fp32_path, fp16_path = memorized
    fp16 = session(fp16_path)
    assert {i.name: i.type for i in fp16.get_inputs()}["past.0.key"] == "tensor(float16)"
    assert {o.name: o.type for o in fp16.get_outputs()}["logits"] == "tensor(float)"
    ops = {n.op_type for n in onnx.load(str(fp16_path), load_external_data=False).graph.node}
    assert {"LayerNormalization", "Softmax", "Cast"} <= ops
    prompt = sequence[:5]
    tokens32, logits32 = ort_greedy(session(fp32_path), arch, prompt, steps=10)
    tokens16, logits16 = ort_greedy(fp16, arch, prompt, steps=10, kv_dtype=np.float16)
    assert tokens32 == sequence[5:15]  # it did learn the sequence, so the comparison means something
    assert tokens16 == tokens32
    np.testing.assert_allclose(np.stack(logits16), np.stack(logits32), atol=0.1)


def test_export_from_a_checkpoint_directory(tmp_path):
    arch = ARCHS["no_projections"]
    model = tiny_model(arch, seed=9)
    model.save_pretrained(tmp_path / "ckpt")
    path = export_onnx(tmp_path / "ckpt", tmp_path / "bundle" / "model.onnx")
    prompt = [5, 9, 11, 200]
    _, logits = ort_greedy(session(path), arch, prompt, steps=0)
    with torch.no_grad():
        expected = model(torch.tensor([prompt])).logits[0, -1].numpy()
    np.testing.assert_allclose(logits[0], expected, atol=1e-4, rtol=0)


def test_a_bf16_model_in_training_mode_exports_as_fp32_and_is_left_as_it_was(tmp_path):
    model = tiny_model(ARCHS["shared"]).to(torch.bfloat16).train()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.training and model.dtype == torch.bfloat16
    assert {i.name: i.type for i in session(path).get_inputs()}["past.0.key"] == "tensor(float)"


def test_bad_export_inputs_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        export_onnx(tmp_path, tmp_path / "model.onnx")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(InputError, match="'gpt2', not 'merino'"):
        export_onnx(tmp_path, tmp_path / "model.onnx")
    with pytest.raises(InputError, match="opset 13"):
        export_onnx(tiny_model(ARCHS["shared"]), tmp_path / "model.onnx", opset=13)


def test_a_single_layer_exports_with_its_kv_cache(tmp_path):
    arch = ARCHS["shared"]
    layer = tiny_model(arch).model.blocks[1].layers[0]
    path = export_layer(layer, tmp_path / "layer.onnx")
    rng = np.random.default_rng(4)
    hidden = rng.standard_normal((2, 3, 128)).astype(np.float32)
    past = rng.standard_normal((2, 2, 5, 64)).astype(np.float32), rng.standard_normal((2, 2, 5, 64)).astype(np.float32)
    mask = np.ones((2, 8), np.int64)
    mask[0, :2] = 0
    out, key, value = session(path).run(None, {"hidden": hidden, "attention_mask": mask, "past_key": past[0], "past_value": past[1]})
    assert key.shape == value.shape == (2, 2, 8, 64)
    np.testing.assert_array_equal(key[:, :, :5], past[0])

    class Cache:
        def update(self, k, v, index):
            return torch.cat([torch.from_numpy(past[0]), k], -2), torch.cat([torch.from_numpy(past[1]), v], -2)

    from merino_edge.model.modeling import attention_bias

    with torch.no_grad():
        expected = layer(torch.from_numpy(hidden), attention_bias(torch.from_numpy(mask), 3), Cache(), 0).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def _graph_with(node, domain_opsets=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="ok"), node], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, 1) for d in domain_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def test_operator_check_names_a_loop(tmp_path):
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1])],
    )
    loop = helper.make_node("Loop", ["", "", "r"], ["y"], name="decode_loop", body=body)
    model = _graph_with(loop)
    onnx.checker.check_model(model)
    onnx.save(model, tmp_path / "loop.onnx")
    with pytest.raises(InputError, match=r"Loop \(node 'decode_loop'\)"):
        check_operators(tmp_path / "loop.onnx")


def test_operator_check_names_a_contrib_op(tmp_path):
    fused = helper.make_node("FusedMatMul", ["r", "r"], ["y"], name="fused", domain="com.microsoft")
    onnx.save(_graph_with(fused, ["com.microsoft"]), tmp_path / "contrib.onnx")
    with pytest.raises(InputError, match=r"1 operator.*com\.microsoft\.FusedMatMul \(node 'fused'\)"):
        check_operators(tmp_path / "contrib.onnx")


def test_operator_check_refuses_a_file_that_is_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(InputError, match="not a readable ONNX file"):
        check_operators(tmp_path / "junk.onnx")
