import pytest
import torch
from safetensors import safe_open
from tiny_models import ARCHS, tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, DynamicCache

from merino_edge.model import MeRinoForCausalLM
from merino_edge.model.modeling import CACHE_FIELD

NAMES = sorted(ARCHS)


@pytest.fixture(scope="module", params=NAMES)
def arch_and_model(request):
    arch = ARCHS[request.param]
    return arch, tiny_model(arch)


def greedy_without_cache(model, ids, steps):
    """Reference decoding: the whole sequence through the model at every step."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_parameter_counts_equal_the_cost_model(arch_and_model):
    arch, model = arch_and_model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == arch.params()
    layer_numel = [[sum(p.numel() for p in layer.parameters()) for layer in block.layers] for block in model.model.blocks]
    assert layer_numel == [[arch.layer_params(b)] * (1 if arch.shared else b.depth) for b in arch.blocks]
    outside_layers = arch.params() - sum(map(sum, layer_numel))
    executed = outside_layers + sum(
        layers[i % len(layers)] for layers, block in zip(layer_numel, model.model.blocks, strict=True) for i in range(block.depth)
    )
    assert executed == arch.executed_params()


def test_flop_counter_equals_the_cost_model_term_by_term(arch_and_model):
    arch, model = arch_and_model
    seq = 12
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, arch.vocab_size, (1, seq)), use_cache=False)
    counts = {name.removeprefix("MeRinoForCausalLM"): sum(c.values()) for name, c in counter.get_flop_counts().items()}
    expected = arch.flops(seq)
    assert counter.get_total_flops() == expected.total
    assert counts[".lm_head"] == expected.head
    projections = [f".model.blocks.{j}.proj_in" for j in range(len(arch.blocks))] + [".model.proj_out"]
    assert sum(counts.get(name, 0) for name in projections) == expected.embedding
    layers = [name for name in counts if name.count(".") == 5 and ".layers." in name]  # .model.blocks.j.layers.k
    linear = sum(counts[f"{name}.attn.{p}_proj"] for name in layers for p in "qkvo")
    assert linear == expected.attention_linear
    assert sum(counts[f"{name}.attn"] for name in layers) - linear == expected.attention_scores
    assert sum(counts[f"{name}.mlp"] for name in layers) == expected.ffn
    per_block = [counts[f".model.blocks.{j}"] - counts.get(f".model.blocks.{j}.proj_in", 0) for j in range(len(arch.blocks))]
    assert tuple(per_block) == expected.per_block


def test_kv_cache_has_one_layer_per_execution_with_the_block_heads(arch_and_model):
    arch, model = arch_and_model
    with torch.no_grad():
        cache = getattr(model(torch.randint(0, arch.vocab_size, (2, 5))), CACHE_FIELD)
    assert isinstance(cache, DynamicCache)
    assert len(cache.layers) == arch.num_layer_executions
    assert [layer.keys.shape[1] for layer in cache.layers] == arch.layer_heads()
    assert {tuple(layer.values.shape[2:]) for layer in cache.layers} == {(5, arch.head_dim)}


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_cache_passed_by_either_name_is_filled_and_continued(arch_and_model, keyword):
    arch, model = arch_and_model
    ids = torch.randint(4, arch.vocab_size, (1, 7), generator=torch.Generator().manual_seed(4))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :5], **{keyword: cache})
        assert cache.get_seq_length() == 5
        step = model(ids[:, 5:], **{keyword: cache}).logits
        full = model(ids, use_cache=False).logits
    torch.testing.assert_close(step, full[:, 5:], atol=1e-5, rtol=0)


def test_generate_with_the_cache_equals_a_greedy_loop_without_it(arch_and_model):
    arch, model = arch_and_model
    prompt = torch.randint(4, arch.vocab_size, (1, 6), generator=torch.Generator().manual_seed(1))
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert generated.shape == (1, 14)
    assert torch.equal(generated, greedy_without_cache(model, prompt, 8))


def test_left_padded_batch_equals_each_row_alone(arch_and_model):
    arch, model = arch_and_model
    g = torch.Generator().manual_seed(2)
    short, long = torch.randint(4, arch.vocab_size, (1, 4), generator=g), torch.randint(4, arch.vocab_size, (1, 9), generator=g)
    ids = torch.full((2, 9), 3)
    ids[0, 5:], ids[1] = short, long
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        batch_logits = model(ids, attention_mask=mask, use_cache=False).logits
        torch.testing.assert_close(batch_logits[0, 5:], model(short, use_cache=False).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batch_logits[1], model(long, use_cache=False).logits[0], atol=1e-5, rtol=0)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=3)
    assert torch.equal(batch[0, 5:], model.generate(short, max_new_tokens=6, do_sample=False, eos_token_id=None)[0])
    assert torch.equal(batch[1], model.generate(long, max_new_tokens=6, do_sample=False, eos_token_id=None)[0])


def test_explicit_position_ids_are_used(arch_and_model):
    arch, model = arch_and_model
    ids = torch.randint(4, arch.vocab_size, (1, 5))
    with torch.no_grad():
        default = model(ids, use_cache=False).logits
        same = model(ids, position_ids=torch.arange(5)[None], use_cache=False).logits
        shifted = model(ids, position_ids=torch.arange(3, 8)[None], use_cache=False).logits
    assert torch.equal(default, same)
    assert not torch.allclose(default, shifted)


def test_labels_give_the_shifted_cross_entropy(arch_and_model):
    arch, model = arch_and_model
    ids = torch.randint(0, arch.vocab_size, (2, 7))
    with torch.no_grad():
        out = model(ids, labels=ids, use_cache=False)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, arch.vocab_size), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("name", ["shared", "unshared"])
def test_save_and_auto_load_give_identical_logits_with_shared_weights_stored_once(tmp_path, name):
    arch = ARCHS[name]
    model = tiny_model(arch, seed=3)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MeRinoForCausalLM)
    ids = torch.randint(0, arch.vocab_size, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        stored = sum(f.get_tensor(k).numel() for k in keys)
    layers = {k.split(".attn.")[0] for k in keys if ".attn.q_proj.weight" in k}
    assert len(layers) == sum(1 if arch.shared else b.depth for b in arch.blocks)
    assert "lm_head.weight" not in keys
    assert stored == arch.params()

