"""Tiny random checkpoints, saved in the same on-disk layouts as the real CSM-1B ones.

- transformers layout: `CsmForConditionalGeneration.save_pretrained` with the RoPE scaling its conversion wrote;
- original layout: the same weights under torchtune names, q/k rows in interleaved-RoPE order, and a config.json
  naming flavors (registered by the tests, since the real flavors are 1B-sized);
- a tiny byte-level BPE tokenizer with Llama-3's special tokens; a random full-size Mimi as safetensors;
- a copy of the published `sesame/csm-1b` repository, file for file, at tiny size (`save_hub_copy`).
"""

import json
import re
from pathlib import Path

import numpy as np
import torch

from csm_cli.loading.config import RopeScaling, TransformerArgs

VOCAB_TEXT = (
    "Hello there. How are you today? I am fine, thank you. The quick brown fox jumps over the lazy dog. "
    "Speech synthesis turns text into audio, frame by frame, eighty milliseconds at a time. "
)
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

# torchtune's Llama-3 scaling; the transformers conversion wrote it per model in equivalent values.
TORCHTUNE_SCALING = RopeScaling(factor=32, low_freq_factor=1, high_freq_factor=4,
                                original_max_position_embeddings=8192)
BACKBONE = TransformerArgs(num_layers=2, dim=128, num_heads=4, num_kv_heads=2, intermediate_dim=256,
                           max_seq_len=2048, rope_scaling=TORCHTUNE_SCALING)
DECODER = TransformerArgs(num_layers=2, dim=64, num_heads=4, num_kv_heads=2, intermediate_dim=128,
                          max_seq_len=2048, rope_scaling=TORCHTUNE_SCALING)
TINY_FLAVORS = {"tiny-backbone": BACKBONE, "tiny-decoder": DECODER}


def save_tokenizer(directory: Path) -> int:
    """A byte-level BPE tokenizer.json like Llama-3's; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([VOCAB_TEXT] * 4, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    return tokenizer.get_vocab_size()


def _hf_rope(args: TransformerArgs, original: int) -> dict:
    """The conversion's per-model values: wavelength thresholds kept, expressed against `original` positions."""
    scale = TORCHTUNE_SCALING.original_max_position_embeddings / original
    return {
        "rope_type": "llama3", "rope_theta": args.rope_theta, "factor": TORCHTUNE_SCALING.factor,
        "low_freq_factor": TORCHTUNE_SCALING.low_freq_factor / scale,
        "high_freq_factor": TORCHTUNE_SCALING.high_freq_factor / scale,
        "original_max_position_embeddings": original,
    }


def build_transformers_model(text_vocab_size: int, seed: int = 0) -> torch.nn.Module:
    from transformers import CsmConfig, CsmForConditionalGeneration

    config = CsmConfig(
        text_vocab_size=text_vocab_size,
        hidden_size=BACKBONE.dim, intermediate_size=BACKBONE.intermediate_dim,
        num_hidden_layers=BACKBONE.num_layers, num_attention_heads=BACKBONE.num_heads,
        num_key_value_heads=BACKBONE.num_kv_heads, max_position_embeddings=BACKBONE.max_seq_len,
        rope_parameters=_hf_rope(BACKBONE, 1024),
        initializer_range=0.3,
        depth_decoder_config={
            "backbone_hidden_size": BACKBONE.dim,
            "hidden_size": DECODER.dim, "intermediate_size": DECODER.intermediate_dim,
            "num_hidden_layers": DECODER.num_layers, "num_attention_heads": DECODER.num_heads,
            "num_key_value_heads": DECODER.num_kv_heads, "max_position_embeddings": 33,
            "rope_parameters": _hf_rope(DECODER, 16),
            "initializer_range": 0.3,
        },
        codec_config={"model_type": "mimi", "hidden_size": 32, "num_filters": 4, "codebook_dim": 8,
                      "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "head_dim": 16, "upsampling_ratios": [8, 6, 5, 4],
                      "num_quantizers": 32, "codebook_size": 2048, "upsample_groups": 32},
    )
    torch.manual_seed(seed)
    return CsmForConditionalGeneration(config).eval()


def save_transformers_layout(model: torch.nn.Module, directory: Path) -> None:
    model.save_pretrained(directory)
    save_tokenizer(directory)


# transformers names -> the original checkpoint's torchtune names
_TO_ORIGINAL = [
    (r"^codec_model\..*", None),
    (r"^backbone_model\.layers\.", "backbone.layers."),
    (r"^depth_decoder\.model\.layers\.", "decoder.layers."),
    (r"\.self_attn\.o_proj\.", ".attn.output_proj."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.gate_proj\.", ".mlp.w1."),
    (r"\.mlp\.down_proj\.", ".mlp.w2."),
    (r"\.mlp\.up_proj\.", ".mlp.w3."),
    (r"\.input_layernorm\.weight$", ".sa_norm.scale"),
    (r"\.post_attention_layernorm\.weight$", ".mlp_norm.scale"),
    (r"^backbone_model\.norm\.weight$", "backbone.norm.scale"),
    (r"^depth_decoder\.model\.norm\.weight$", "decoder.norm.scale"),
    (r"^(backbone_model\.embed_tokens\.)?embed_text_tokens\.weight$", "text_embeddings.weight"),
    (r"^(backbone_model\.embed_tokens\.embed_audio_tokens|depth_decoder\.model\.embed_tokens)\.weight$",
     "audio_embeddings.weight"),
    (r"^lm_head\.weight$", "codebook0_head.weight"),
    (r"^depth_decoder\.model\.inputs_embeds_projector\.weight$", "projection.weight"),
    (r"^depth_decoder\.codebooks_head\.weight$", "audio_head"),
]


def _half_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    out_dim, in_dim = weight.shape
    return weight.view(heads, 2, out_dim // heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def original_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The transformers model's weights under the original checkpoint's names and q/k row order."""
    state = {}
    for name, tensor in model.state_dict().items():
        for pattern, replacement in _TO_ORIGINAL:
            if re.search(pattern, name):
                name = None if replacement is None else re.sub(pattern, replacement, name)
                if name is None:
                    break
        if name is None:
            continue
        match = re.search(r"^(backbone|decoder)\..*\.attn\.([qk])_proj\.weight$", name)
        if match:
            args = BACKBONE if match[1] == "backbone" else DECODER
            tensor = _half_to_interleaved(tensor, args.num_heads if match[2] == "q" else args.num_kv_heads)
        state[name] = tensor.contiguous().clone()
    return state


def original_config(model: torch.nn.Module, backbone_flavor: str, decoder_flavor: str) -> dict:
    return {"backbone_flavor": backbone_flavor, "decoder_flavor": decoder_flavor,
            "text_vocab_size": model.config.text_vocab_size, "audio_vocab_size": 2051, "audio_num_codebooks": 32}


def save_original_layout(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model), str(directory / "model.safetensors"))
    config = original_config(model, "tiny-backbone", "tiny-decoder")
    (directory / "config.json").write_text(json.dumps(config))


def save_random_mimi(path: Path, seed: int = 0) -> None:
    """A full-size Mimi with random weights and random codebooks (a fresh Mimi's codebooks are all zero, so every
    code would decode alike and every sound encode to code 0)."""
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = loaders.get_mimi(None, device="cpu").state_dict()
    for name in state:
        if name.endswith("embedding_sum"):
            state[name] = torch.randn_like(state[name])
        elif name.endswith("_initialized"):
            state[name] = torch.ones_like(state[name])
    save_file(state, str(path))


# --- the published sesame/csm-1b repository, file for file -------------------------------------------------------

# Every file of the hub repository's main branch (public listing; sizes of the real files in bytes).
HUB_FILES = {
    ".gitattributes": 1948,
    "README.md": 12140,
    "chat_template.jinja": 2002,
    "ckpt.pt": 6219618714,
    "config.json": 3280,
    "generation_config.json": 264,
    "model.safetensors": 6211186784,
    "preprocessor_config.json": 271,
    "prompts/conversational_a.wav": 2646044,
    "prompts/conversational_b.wav": 2646044,
    "prompts/read_speech_a.wav": 831412,
    "prompts/read_speech_b.wav": 576052,
    "prompts/read_speech_c.wav": 385964,
    "prompts/read_speech_d.wav": 435884,
    "special_tokens_map.json": 449,
    "tokenizer.json": 17209980,
    "tokenizer_config.json": 50563,
    "transformers-00001-of-00002.safetensors": 4944026784,
    "transformers-00002-of-00002.safetensors": 2189474180,
    "transformers.safetensors.index.json": 59730,
}
ORIGINAL_FILES = {"model.safetensors"}
TRANSFORMERS_FILES = {"transformers.safetensors.index.json", "transformers-00001-of-00002.safetensors",
                      "transformers-00002-of-00002.safetensors"}
# Keys of the real config.json that public inspections of it check: both layouts' keys side by side.
HUB_CONFIG_KEYS = {
    "architectures", "model_type", "transformers_weights", "num_codebooks", "vocab_size", "text_vocab_size",
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "max_position_embeddings", "codebook_pad_token_id", "codebook_eos_token_id", "rope_theta", "rope_scaling",
    "depth_decoder_config", "codec_config", "bos_token_id", "eos_token_id", "pad_token_id", "audio_token_id",
    "audio_eos_token_id", "backbone_flavor", "decoder_flavor", "audio_vocab_size", "audio_num_codebooks",
}
# The voice prompts: 16-bit mono at 44.1 kHz like the real ones (conversational_*: 30.0 s), here a fraction of a second.
PROMPT_RATE = 44_100
PROMPT_SECONDS = {"conversational_a": 0.6, "conversational_b": 0.5, "read_speech_a": 0.4, "read_speech_b": 0.3,
                  "read_speech_c": 0.3, "read_speech_d": 0.3}
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- bos_token }}{{- '[' + message['role'] + ']' }}"
    "{%- for content in message['content'] %}{%- if content['type'] == 'text' %}{{- content['text'] }}"
    "{%- elif content['type'] == 'audio' %}{{- '<|AUDIO|><|audio_eos|>' }}{%- endif %}{%- endfor %}"
    "{{- eos_token }}{%- endfor %}"
)


def _hub_config(model: torch.nn.Module) -> dict:
    """The transformers config as transformers 4.52 wrote it for the hub (`rope_theta` and `rope_scaling`), with the
    original layout's keys beside it and `transformers_weights` naming the shards' index."""

    def legacy_rope(config: dict) -> dict:
        rope = dict(config.pop("rope_parameters"))
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = rope
        return config

    config = legacy_rope(model.config.to_diff_dict())
    config["depth_decoder_config"] = legacy_rope(config["depth_decoder_config"])
    config.update(architectures=["CsmForConditionalGeneration"], eos_token_id=128001, torch_dtype="float32",
                  transformers_weights="transformers.safetensors.index.json")
    config.update(original_config(model, "llama-1B", "llama-100M"))
    return dict(sorted(config.items()))


def _save_transformers_shards(model: torch.nn.Module, directory: Path) -> None:
    """transformers' weights (Mimi included) in two shards and their index, as the hub repository holds them."""
    from safetensors.torch import save_file

    state = {name: tensor.contiguous().clone() for name, tensor in model.state_dict().items()}
    names = sorted(state)
    shards = {"transformers-00001-of-00002.safetensors": names[: len(names) // 2],
              "transformers-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, shard_names in shards.items():
        save_file({name: state[name] for name in shard_names}, str(directory / shard), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {name: shard for shard, shard_names in shards.items() for name in shard_names}}
    (directory / "transformers.safetensors.index.json").write_text(json.dumps(index, indent=2))


def prompt_audio(name: str) -> np.ndarray:
    """An audible, distinct stand-in for a voice prompt: a few harmonics over noise. float32 [samples] at 44.1 kHz."""
    rng = np.random.default_rng(sorted(PROMPT_SECONDS).index(name))
    t = np.arange(int(PROMPT_SECONDS[name] * PROMPT_RATE)) / PROMPT_RATE
    pitch = rng.uniform(100, 250)
    voiced = sum(np.sin(2 * np.pi * pitch * k * t) / k for k in range(1, 5))
    return (0.2 * voiced + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def save_hub_copy(model: torch.nn.Module, directory: Path) -> None:
    """Every file of `HUB_FILES`, at tiny size, from one set of weights: the original layout's model.safetensors and
    ckpt.pt, the transformers shards with Mimi, the shared config, the tokenizer and the voice prompts."""
    import soundfile as sf
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
                                              "*.pt filter=lfs diff=lfs merge=lfs -text\n"
                                              "*.wav filter=lfs diff=lfs merge=lfs -text\n")
    (directory / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n## CSM 1B\n")
    (directory / "config.json").write_text(json.dumps(_hub_config(model), indent=2))
    original = original_state(model)
    save_file(original, str(directory / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"model": original}, directory / "ckpt.pt")
    _save_transformers_shards(model, directory)
    save_tokenizer(directory)
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "clean_up_tokenization_spaces": True,
        "model_max_length": 131072, "tokenizer_class": "PreTrainedTokenizerFast", "processor_class": "CsmProcessor",
    }, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS}, indent=2))
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (directory / "generation_config.json").write_text(json.dumps({
        "_from_model_config": True, "bos_token_id": 128000, "eos_token_id": 128001, "pad_token_id": 128002,
        "depth_decoder_do_sample": True, "depth_decoder_temperature": 0.9, "depth_decoder_top_k": 50,
        "do_sample": True, "max_length": 2048, "temperature": 0.9, "top_k": 50,
    }, indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "chunk_length_s": None, "feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
        "overlap": None, "padding_side": "right", "padding_value": 0.0, "processor_class": "CsmProcessor",
        "return_attention_mask": True, "sampling_rate": 24000,
    }, indent=2))
    (directory / "prompts").mkdir(exist_ok=True)
    for name in PROMPT_SECONDS:
        sf.write(directory / "prompts" / f"{name}.wav", prompt_audio(name), PROMPT_RATE, subtype="PCM_16")
