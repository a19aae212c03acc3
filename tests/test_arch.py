import json

import pytest

from merino_edge.arch import TABLE5, ArchSpec, Axes, Block, load_arch, save_arch
from merino_edge.errors import IncompatibleError, InputError


def spec(*blocks, **kw):
    return ArchSpec(blocks=tuple(Block(*b) for b in blocks), **kw)


def test_params_by_hand_for_one_block():
    arch = spec((128, 2.0, 3), vocab_size=1000, proj_dim=64, max_positions=32)
    e, f = 128, 256
    layer = 4 * (e * e + e) + (e * f + f + f * e + e) + 4 * e
    embedding = 1000 * 64 + 32 * 64 + 64 * 128 + 128 * 64 + 2 * 128
    assert arch.params() == embedding + layer
    assert arch.executed_params() == embedding + 3 * layer
    assert arch.non_embedding_params() == layer
    assert spec((128, 2.0, 3), vocab_size=1000, proj_dim=64, max_positions=32, shared=False).params() == embedding + 3 * layer


def test_projections_only_where_widths_differ():
    assert spec((768, 1.0, 1), (768, 1.0, 1)).projections() == []
    assert spec((256, 1.0, 1), (256, 1.0, 1), (512, 1.0, 1)).projections() == [(768, 256), (256, 512), (512, 768)]


def test_flops_breakdown_by_hand():
    arch = spec((64, 4.0, 2), (128, 1.5, 1), vocab_size=500, proj_dim=64)
    s = 16
    f = arch.flops(s)
    layer64 = 8 * s * 64 * 64 + 4 * s * s * 64 + 4 * s * 64 * 256
    layer128 = 8 * s * 128 * 128 + 4 * s * s * 128 + 4 * s * 128 * 192
    assert f.per_block == (2 * layer64, layer128)
    assert f.embedding == 2 * s * (64 * 128 + 128 * 64)
    assert f.head == 2 * s * 64 * 500
    assert f.total == f.embedding + f.head + 2 * layer64 + layer128


def test_kv_cache_and_memory():
    arch = spec((64, 1.0, 2), (256, 1.0, 3))
    assert arch.kv_cache_bytes_per_token(2) == (2 * 2 * 64 + 3 * 2 * 256) * 2
    assert arch.layer_heads() == [1, 1, 4, 4, 4]
    assert arch.memory_bytes(100, 4) == arch.params() * 4 + 100 * arch.kv_cache_bytes_per_token(4)


@pytest.mark.parametrize(
    ("blocks", "field"),
    [
        (((100, 1.0, 1),), "blocks[0].width"),
        (((256, 1.0, 1), (128, 1.0, 1)), "blocks[1].width"),
        (((64, 1.0, 0),), "blocks[0].depth"),
        (((64, 1.1, 1),), "blocks[0].ratio"),
    ],
)
def test_impossible_specs_name_the_field(blocks, field):
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        spec(*blocks)


def test_axes_check_and_widening():
    arch = spec((1280, 1.0, 1))
    with pytest.raises(InputError, match=r"blocks\[0\]\.width: 1280 is not in the search space"):
        arch.check_axes(TABLE5)
    arch.check_axes(Axes(widths=(*TABLE5.widths, 1280)))
    with pytest.raises(InputError, match="depth"):
        spec((64, 1.0, 5)).check_axes()


def test_json_round_trip_and_arch_file(tmp_path):
    arch = spec((256, 2.5, 2), (512, 4.0, 4), shared=False)
    assert ArchSpec.from_json(json.loads(json.dumps(arch.to_json()))) == arch
    path = tmp_path / "arch.json"
    save_arch(path, arch, {"seed": 3})
    assert load_arch(path) == arch
    assert json.loads(path.read_text())["search"] == {"seed": 3}


def test_arch_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"arch": {"blocks": [{"width": 64}]}}')
    with pytest.raises(InputError, match=r"blocks\[0\]: needs width, ratio and depth"):
        load_arch(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_arch(bad)
    bad.write_text('{"schema_version": 99, "blocks": []}')
    with pytest.raises(IncompatibleError, match="schema_version 99"):
        load_arch(bad)
    with pytest.raises(InputError, match="not found"):
        load_arch(tmp_path / "missing.json")
