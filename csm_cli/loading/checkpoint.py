"""How the weights of either checkpoint layout become a `CSM`."""

import re

import torch

from ..errors import CsmError, first_line
from ..generation.model import CSM
from ..progress import LoadProgress
from .config import CsmArgs, Layout
from .repository import ModelRepository

# Checkpoint tensor names -> this package's names; None drops the tensor.
_ORIGINAL_NAMES = [
    (r"\.attn\.output_proj\.", ".attn.o_proj."),
    (r"\.sa_norm\.scale$", ".attn_norm.weight"),
    (r"\.mlp_norm\.scale$", ".mlp_norm.weight"),
    (r"^(backbone|decoder)\.norm\.scale$", r"\1.norm.weight"),
]
_TRANSFORMERS_NAMES = [
    (r"^codec_model\..*", None),  # transformers' own Mimi: the codec comes from moshi
    (r"^backbone_model\.layers\.", "backbone.layers."),
    (r"^depth_decoder\.model\.layers\.", "decoder.layers."),
    (r"\.self_attn\.", ".attn."),
    (r"\.mlp\.gate_proj\.", ".mlp.w1."),
    (r"\.mlp\.down_proj\.", ".mlp.w2."),
    (r"\.mlp\.up_proj\.", ".mlp.w3."),
    (r"\.input_layernorm\.", ".attn_norm."),
    (r"\.post_attention_layernorm\.", ".mlp_norm."),
    (r"^backbone_model\.norm\.", "backbone.norm."),
    (r"^depth_decoder\.model\.norm\.", "decoder.norm."),
    (r"^(backbone_model\.embed_tokens\.)?embed_text_tokens\.weight$", "text_embeddings.weight"),
    # tied: a checkpoint holds one or both names for the same tensor
    (r"^(backbone_model\.embed_tokens\.embed_audio_tokens|depth_decoder\.model\.embed_tokens)\.weight$",
     "audio_embeddings.weight"),
    (r"^lm_head\.weight$", "codebook0_head.weight"),
    (r"^depth_decoder\.model\.inputs_embeds_projector\.weight$", "projection.weight"),
    (r"^depth_decoder\.codebooks_head\.weight$", "audio_head"),
]
_NAMES = {Layout.ORIGINAL: _ORIGINAL_NAMES, Layout.TRANSFORMERS: _TRANSFORMERS_NAMES}


def rename(name: str, layout: Layout) -> str | None:
    for pattern, replacement in _NAMES[layout]:
        if re.search(pattern, name):
            if replacement is None:
                return None
            name = re.sub(pattern, replacement, name)
    return name


def interleaved_to_half_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k projection rows ordered for torchtune's interleaved RoPE -> ordered for rotate-half RoPE."""
    out_dim, in_dim = weight.shape
    return weight.view(heads, out_dim // heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def load_model(repository: ModelRepository, device: torch.device, dtype: torch.dtype,
               progress: LoadProgress) -> CSM:
    """Builds the model of the repository's config and fills it with its weights, tensor by tensor."""
    from safetensors import SafetensorError, safe_open

    layout, args = repository.layout, repository.args
    state: dict[str, torch.Tensor] = {}
    with progress.bytes_task("loading weights", repository.weights_bytes) as advance:
        for file in repository.weights:
            try:
                with safe_open(str(file), framework="pt", device="cpu") as tensors:
                    for name in tensors.keys():  # noqa: SIM118 - safe_open is not a mapping
                        target = rename(name, layout)
                        if target is None:
                            continue
                        tensor = tensors.get_tensor(name)
                        advance(tensor.numel() * tensor.element_size())
                        if layout is Layout.ORIGINAL:
                            tensor = _to_half_rope(target, tensor, args)
                        state[target] = tensor.to(device=device, dtype=dtype)
            except (SafetensorError, OSError) as e:
                raise CsmError(f"{file} is damaged or not a safetensors file ({first_line(e)}): copy or download it "
                               "again") from None
    with torch.device("meta"):
        model = CSM(args)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CsmError(f"the weights in {repository.directory} do not match its config.json: {detail}") from None
    model.eval().requires_grad_(False)
    model.setup()
    return model


def _to_half_rope(name: str, tensor: torch.Tensor, args: CsmArgs) -> torch.Tensor:
    match = re.search(r"^(backbone|decoder)\..*\.attn\.([qk])_proj\.weight$", name)
    if match is None:
        return tensor
    transformer = args.backbone if match[1] == "backbone" else args.decoder
    heads = transformer.num_heads if match[2] == "q" else transformer.num_kv_heads
    return interleaved_to_half_rope(tensor, heads)
