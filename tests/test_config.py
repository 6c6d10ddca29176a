import pytest

from csm_cli.config import CSM_1B, Layout, RopeScaling, parse_config
from csm_cli.errors import CsmError


def test_original_layout_names_torchtune_flavors():
    config = {"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M", "text_vocab_size": 128256,
              "audio_vocab_size": 2051, "audio_num_codebooks": 32}
    assert parse_config(config) == (Layout.ORIGINAL, CSM_1B)


def test_transformers_layout_reads_rope_scaling_exactly(transformers_dir):
    import json

    layout, args = parse_config(json.loads((transformers_dir / "config.json").read_text()))
    assert layout is Layout.TRANSFORMERS
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
    _, args = parse_config(config)
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
