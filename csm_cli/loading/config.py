"""The model's dimensions, read from a checkpoint's `config.json` in either of the two layouts CSM-1B ships in.

- original (SesameAILabs/csm): `backbone_flavor` / `decoder_flavor` name torchtune Llama presets;
- transformers (`CsmForConditionalGeneration`): `model_type: csm` with every dimension and the RoPE scaling spelled out.

One config may hold both (the published `sesame/csm-1b` does): the dimensions are then read from the transformers
keys, which describe the same model explicitly (its RoPE scaling in equivalent per-model values), whichever layout's
weights are loaded.
"""

import json
import math
from enum import Enum
from typing import Any

from ..audio import CODEC_CARDINALITY, NUM_CODEBOOKS
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
    """The model's dimensions: the transformers keys when present (explicit), else the original layout's flavors.
    Each is checked before anything is allocated (`_check`): a CsmError names config.json and the key."""
    layout = Layout.TRANSFORMERS if Layout.TRANSFORMERS in layouts(config) else Layout.ORIGINAL
    try:
        return _parse_original(config) if layout is Layout.ORIGINAL else _parse_transformers(config)
    except (KeyError, TypeError, ValueError, AttributeError) as e:  # a key missing, or a value of the wrong type
        raise CsmError(f"config.json of the {layout.value} layout is incomplete or invalid ({e!r})") from None


# What csm can run. The window's attention mask (positions x positions) and KV caches are allocated when the model
# loads: 32768 positions make a 4 GiB mask (CSM-1B has 2048).
MAX_POSITIONS = 32_768
MAX_DIMENSION = 1 << 20
NEEDS = "a CSM checkpoint's config.json as it was published, or fix the key"


def _whole(config: dict[str, Any], key: str, where: str = "", low: int = 1, high: int = MAX_DIMENSION,
           why: str = "") -> int:
    """config[key], a whole number from `low` to `high` (JSON's integers only, not true or 2.5)."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        allowed = f"{low}" if low == high else f"a whole number from {low} to {high}"
        raise CsmError(f"config.json: {where}{key} must be {allowed}{why}, got {json.dumps(value)[:40]}: give {NEEDS}")
    return value


def _positive(config: dict[str, Any], key: str, where: str = "", default: float | None = None) -> float:
    """config[key] (or `default` when absent), a finite number above 0."""
    value = config.get(key, default) if default is not None else config[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise CsmError(f"config.json: {where}{key} must be a number above 0, got {json.dumps(value)[:40]}: give "
                       f"{NEEDS}")
    return float(value)


def _flavor(name: str) -> TransformerArgs:
    if name not in FLAVORS:
        raise CsmError(f"unknown model flavor {name!r} in config.json (known: {', '.join(FLAVORS)})")
    return FLAVORS[name]


def _vocabularies(config: dict[str, Any], text: str, audio: str, codebooks: str) -> tuple[int, int, int]:
    """The text and audio vocabularies and the codebooks: Mimi, as csm runs it, gives NUM_CODEBOOKS codebooks of
    CODEC_CARDINALITY codes, which the audio vocabulary must hold."""
    return (_whole(config, text),
            _whole(config, audio, low=CODEC_CARDINALITY, why=" (Mimi's codes and the model's own)"),
            _whole(config, codebooks, low=NUM_CODEBOOKS, high=NUM_CODEBOOKS, why=" (the codebooks Mimi decodes)"))


def _parse_original(config: dict[str, Any]) -> CsmArgs:
    text, audio, codebooks = _vocabularies(config, "text_vocab_size", "audio_vocab_size", "audio_num_codebooks")
    return CsmArgs(backbone=_flavor(config["backbone_flavor"]), decoder=_flavor(config["decoder_flavor"]),
                   text_vocab_size=text, audio_vocab_size=audio, num_codebooks=codebooks)


def _rope(config: dict[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    """RoPE base and scaling of a transformers config, old (`rope_theta`/`rope_scaling`) or new (`rope_parameters`)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    theta = _positive(params, "rope_theta", where, default=config.get("rope_theta", 500_000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise CsmError(f"unsupported RoPE type {rope_type!r} in config.json (supported: default, llama3)")
    low, high = _positive(params, "low_freq_factor", where), _positive(params, "high_freq_factor", where)
    if low >= high:
        raise CsmError(f"config.json: {where}high_freq_factor {high:g} must be above low_freq_factor {low:g}: give "
                       f"{NEEDS}")
    return theta, RopeScaling(
        factor=_positive(params, "factor", where),
        low_freq_factor=low,
        high_freq_factor=high,
        original_max_position_embeddings=_whole(params, "original_max_position_embeddings", where),
    )


def _transformer(config: dict[str, Any], where: str = "", min_positions: int = 1) -> TransformerArgs:
    theta, scaling = _rope(config, where)
    dim = _whole(config, "hidden_size", where)
    num_heads = _whole(config, "num_attention_heads", where, high=dim)
    num_kv_heads = _whole(config, "num_key_value_heads", where, high=num_heads) if config.get(
        "num_key_value_heads") is not None else num_heads
    head_dim = dim // num_heads
    if dim % num_heads or head_dim % 2:
        raise CsmError(f"config.json: {where}hidden_size {dim} must be num_attention_heads {num_heads} times an even "
                       f"head dimension (RoPE turns pairs): give {NEEDS}")
    if num_heads % num_kv_heads:
        raise CsmError(f"config.json: {where}num_attention_heads {num_heads} must be a multiple of "
                       f"num_key_value_heads {num_kv_heads}: give {NEEDS}")
    if config.get("head_dim") is not None and config["head_dim"] != head_dim:
        raise CsmError(f"config.json: {where}head_dim {json.dumps(config['head_dim'])[:40]} must be hidden_size / "
                       f"num_attention_heads = {head_dim} (csm runs no other): give {NEEDS}")
    return TransformerArgs(
        num_layers=_whole(config, "num_hidden_layers", where),
        dim=dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_dim=_whole(config, "intermediate_size", where),
        max_seq_len=_whole(config, "max_position_embeddings", where, low=min_positions, high=MAX_POSITIONS,
                           why=" (csm allocates the window's attention mask and KV caches when it loads)"),
        norm_eps=_positive(config, "rms_norm_eps", where, default=1e-5),
        rope_theta=theta,
        rope_scaling=scaling,
    )


def _parse_transformers(config: dict[str, Any]) -> CsmArgs:
    text, audio, codebooks = _vocabularies(config, "text_vocab_size", "vocab_size", "num_codebooks")
    decoder = config["depth_decoder_config"]
    return CsmArgs(
        backbone=_transformer(config),
        # the depth decoder's positions: the backbone's state, then one per codebook
        decoder=_transformer(decoder, "depth_decoder_config.", min_positions=codebooks + 1),
        text_vocab_size=text,
        audio_vocab_size=audio,
        num_codebooks=codebooks,
    )
