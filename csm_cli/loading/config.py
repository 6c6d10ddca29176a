"""The model's dimensions, read from a checkpoint's `config.json` in either of the two layouts CSM-1B ships in.

- original (SesameAILabs/csm): `backbone_flavor` / `decoder_flavor` name torchtune Llama presets;
- transformers (`CsmForConditionalGeneration`): `model_type: csm` with every dimension and the RoPE scaling spelled out.

One config may hold both (the published `sesame/csm-1b` does): the dimensions are then read from the transformers
keys, which describe the same model explicitly (its RoPE scaling in equivalent per-model values), whichever layout's
weights are loaded.
"""

from enum import Enum
from typing import Any

from ..errors import CsmError
from ..generation.args import CsmArgs, RopeScaling, TransformerArgs

DEFAULT_MODEL = "sesame/csm-1b"
# For a model without a tokenizer: an ungated copy of meta-llama/Llama-3.2-1B's (the reference's, which is gated).
DEFAULT_TOKENIZER = "unsloth/Llama-3.2-1B"


class Layout(Enum):
    ORIGINAL = "original"
    TRANSFORMERS = "transformers"


# torchtune's `llama3_2(..., scale_factor=32)` as the original checkpoints name them.
_TORCHTUNE_ROPE_SCALING = RopeScaling(
    factor=32, low_freq_factor=1, high_freq_factor=4, original_max_position_embeddings=8192
)
FLAVORS: dict[str, TransformerArgs] = {
    "llama-1B": TransformerArgs(
        num_layers=16, dim=2048, num_heads=32, num_kv_heads=8, intermediate_dim=8192, max_seq_len=2048,
        rope_scaling=_TORCHTUNE_ROPE_SCALING,
    ),
    "llama-100M": TransformerArgs(
        num_layers=4, dim=1024, num_heads=8, num_kv_heads=2, intermediate_dim=8192, max_seq_len=2048,
        rope_scaling=_TORCHTUNE_ROPE_SCALING,
    ),
}

CSM_1B = CsmArgs(backbone=FLAVORS["llama-1B"], decoder=FLAVORS["llama-100M"], text_vocab_size=128_256)


def layouts(config: dict[str, Any]) -> list[Layout]:
    """The layouts whose weights this config describes, the preferred first: the original layout's one
    `model.safetensors` is the smaller download (the transformers shards also carry a copy of Mimi)."""
    found = []
    if "backbone_flavor" in config:
        found.append(Layout.ORIGINAL)
    if config.get("model_type") == "csm":
        found.append(Layout.TRANSFORMERS)
    if not found:
        raise CsmError("config.json is neither a CSM checkpoint of the original layout nor of the transformers layout")
    return found


def parse_config(config: dict[str, Any]) -> CsmArgs:
    """The model's dimensions: the transformers keys when present (explicit), else the original layout's flavors."""
    layout = Layout.TRANSFORMERS if Layout.TRANSFORMERS in layouts(config) else Layout.ORIGINAL
    try:
        return _parse_original(config) if layout is Layout.ORIGINAL else _parse_transformers(config)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a key missing, or a value of the wrong type
        raise CsmError(f"config.json of the {layout.value} layout is incomplete or invalid ({e!r})") from None


def _flavor(name: str) -> TransformerArgs:
    if name not in FLAVORS:
        raise CsmError(f"unknown model flavor {name!r} in config.json (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]


def _parse_original(config: dict[str, Any]) -> CsmArgs:
    return CsmArgs(
        backbone=_flavor(config["backbone_flavor"]),
        decoder=_flavor(config["decoder_flavor"]),
        text_vocab_size=int(config["text_vocab_size"]),
        audio_vocab_size=int(config["audio_vocab_size"]),
        num_codebooks=int(config["audio_num_codebooks"]),
    )


def _rope(config: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling of a transformers config, old (`rope_theta`/`rope_scaling`) or new (`rope_parameters`)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", config.get("rope_theta", 500_000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CsmError(f"unsupported RoPE type {rope_type!r} in config.json (supported: default, llama3)")
    return theta, RopeScaling(
        factor=float(params["factor"]),
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params["original_max_position_embeddings"]),
    )


def _transformer(config: dict[str, Any]) -> TransformerArgs:
    theta, scaling = _rope(config)
    dim = int(config["hidden_size"])
    num_heads = int(config["num_attention_heads"])
    head_dim = config.get("head_dim")
    if head_dim is not None and int(head_dim) != dim // num_heads:
        raise CsmError(f"head_dim {head_dim} != hidden_size / num_attention_heads is not supported")
    return TransformerArgs(
        num_layers=int(config["num_hidden_layers"]),
        dim=dim,
        num_heads=num_heads,
        num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
        intermediate_dim=int(config["intermediate_size"]),
        max_seq_len=int(config["max_position_embeddings"]),
        norm_eps=float(config.get("rms_norm_eps", 1e-5)),
        rope_theta=theta,
        rope_scaling=scaling,
    )


def _parse_transformers(config: dict[str, Any]) -> CsmArgs:
    decoder = config["depth_decoder_config"]
    return CsmArgs(
        backbone=_transformer(config),
        decoder=_transformer(decoder),
        text_vocab_size=int(config["text_vocab_size"]),
        audio_vocab_size=int(config["vocab_size"]),
        num_codebooks=int(config["num_codebooks"]),
    )
