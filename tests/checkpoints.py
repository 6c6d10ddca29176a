"""Tiny random checkpoints, saved in the same on-disk layouts as the real CSM-1B ones.

- transformers layout: `CsmForConditionalGeneration.save_pretrained` with the RoPE scaling its conversion wrote;
- original layout: the same weights under torchtune names, q/k rows in interleaved-RoPE order, and a config.json
  naming flavors (registered by the tests, since the real flavors are 1B-sized);
- a tiny byte-level BPE tokenizer with Llama-3's special tokens; a random full-size Mimi as safetensors.
"""

import json
import re
from pathlib import Path

import torch

from csm_cli.config import RopeScaling, TransformerArgs

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


def save_original_layout(model: torch.nn.Module, directory: Path) -> None:
    from safetensors.torch import save_file

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
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"))
    config = {"backbone_flavor": "tiny-backbone", "decoder_flavor": "tiny-decoder",
              "text_vocab_size": model.config.text_vocab_size, "audio_vocab_size": 2051, "audio_num_codebooks": 32}
    (directory / "config.json").write_text(json.dumps(config))


def save_random_mimi(path: Path, seed: int = 0) -> None:
    from moshi.models import loaders
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    save_file(loaders.get_mimi(None, device="cpu").state_dict(), str(path))
