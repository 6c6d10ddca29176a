import dataclasses
import json

import pytest
import torch

from csm_cli.errors import CsmError
from csm_cli.generation.model import rope_frequencies
from csm_cli.loading.config import CSM_1B, Layout, RopeScaling, layouts, parse_config

ORIGINAL_KEYS = {"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M", "text_vocab_size": 128256,
                 "audio_vocab_size": 2051, "audio_num_codebooks": 32}


def test_original_layout_names_torchtune_flavors():
    assert layouts(ORIGINAL_KEYS) == [Layout.ORIGINAL]
    assert parse_config(ORIGINAL_KEYS) == CSM_1B


def full_size_hub_config() -> dict:
    """The published config.json's dimensions: transformers' CsmConfig with the conversion's RoPE scaling, as
    transformers 4.52 wrote them (rope_theta, rope_scaling), and the original layout's keys beside them."""
    from transformers import CsmConfig

    def rope(low: float, high: float, original: int) -> dict:
        return {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": original}

    config = CsmConfig().to_dict()
    decoder = config["depth_decoder_config"]
    for part, scaling in ((config, rope(0.125, 0.5, 1024)), (decoder, rope(0.001953125, 0.0078125, 16))):
        del part["rope_parameters"]  # transformers 5's name for what 4.52 wrote as these two keys
        part.update(rope_theta=500000, rope_scaling=scaling)
    return {**config, **ORIGINAL_KEYS}


def test_the_transformers_dimensions_of_the_hub_config_are_the_flavors_it_names():
    """Reading the dimensions from the transformers keys is sound for the original layout's weights too."""
    config = full_size_hub_config()
    assert layouts(config) == [Layout.ORIGINAL, Layout.TRANSFORMERS]
    args = parse_config(config)
    for ours, flavor in ((args.backbone, CSM_1B.backbone), (args.decoder, CSM_1B.decoder)):
        shape = dataclasses.replace(ours, rope_scaling=None, max_seq_len=0)
        assert shape == dataclasses.replace(flavor, rope_scaling=None, max_seq_len=0)
        torch.testing.assert_close(rope_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling),
                                   rope_frequencies(flavor.head_dim, flavor.rope_theta, flavor.rope_scaling))
    assert args.backbone.max_seq_len == CSM_1B.backbone.max_seq_len
    assert args.decoder.max_seq_len >= CSM_1B.num_codebooks  # the depth decoder's positions 0..32
    assert (args.text_vocab_size, args.audio_vocab_size, args.num_codebooks) == (
        CSM_1B.text_vocab_size, CSM_1B.audio_vocab_size, CSM_1B.num_codebooks)


def test_transformers_layout_reads_rope_scaling_exactly(transformers_dir):
    config = json.loads((transformers_dir / "config.json").read_text())
    assert layouts(config) == [Layout.TRANSFORMERS]
    args = parse_config(config)
    assert args.backbone.rope_scaling == RopeScaling(32, 0.125, 0.5, 1024)
    assert args.decoder.rope_scaling == RopeScaling(32, 0.001953125, 0.0078125, 16)
    assert (args.backbone.dim, args.decoder.dim, args.num_codebooks) == (128, 64, 32)


def test_legacy_rope_scaling_key():
    config = {"model_type": "csm", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
              "intermediate_size": 16, "max_position_embeddings": 64, "text_vocab_size": 10, "vocab_size": 2051,
              "num_codebooks": 32, "rope_theta": 1000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
                               "original_max_position_embeddings": 32}}
    config["depth_decoder_config"] = dict(config)
    args = parse_config(config)
    assert args.backbone.rope_theta == 1000.0
    assert args.decoder.rope_scaling == RopeScaling(8, 1, 4, 32)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "llama"}, "neither a CSM checkpoint"),
        ({"backbone_flavor": "llama-8B", "decoder_flavor": "llama-100M", "text_vocab_size": 1,
          "audio_vocab_size": 2051, "audio_num_codebooks": 32}, "unknown model flavor 'llama-8B'"),
        ({"backbone_flavor": "llama-1B"}, "incomplete or invalid"),
        ({"model_type": "csm", "hidden_size": 8}, "incomplete or invalid"),
    ],
)
def test_bad_configs_are_explained(config, message):
    with pytest.raises(CsmError, match=message):
        parse_config(config)
