import pytest
from tiny_models import ARCHS
from transformers import AutoConfig

from merino_edge.arch import ArchSpec, Block
from merino_edge.errors import InputError
from merino_edge.model import MeRinoConfig


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_config_round_trips_the_arch_through_config_json(tmp_path, name):
    arch = ARCHS[name]
    config = MeRinoConfig.from_arch(arch, layer_norm_eps=1e-6)
    assert config.to_arch() == arch
    assert config.num_hidden_layers == arch.num_layer_executions
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, MeRinoConfig)
    assert loaded.to_arch() == arch
    assert loaded.layer_norm_eps == 1e-6
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 3)


def test_a_default_config_is_a_valid_model_config():
    config = MeRinoConfig()
    assert config.to_arch() == ArchSpec(blocks=(Block(768, 4.0, 12),))


def test_decreasing_widths_are_refused_naming_the_block():
    with pytest.raises(InputError, match=r"blocks\[1\]\.width"):
        MeRinoConfig(block_widths=[128, 64], block_ratios=[2.0, 2.0], block_depths=[1, 1])


def test_block_lists_of_different_lengths_are_refused():
    with pytest.raises(InputError, match="same length"):
        MeRinoConfig(block_widths=[64, 128], block_ratios=[2.0], block_depths=[1, 1])
