"""How the weights of either checkpoint layout become a `CSM`, quantized for the CPU if asked. Int8 weights are made
once and cached (`cache.INT8_WEIGHTS`): a start then maps 2.0 GB of them into memory instead of reading 6.2 GB of
float32 and quantizing them (8 s on 2 cores)."""

import re
from importlib.metadata import version
from pathlib import Path

import torch

from ..errors import CsmError, first_line
from ..generation.model import CSM
from ..progress import LoadProgress
from .cache import DAMAGED_TENSORS, INT8_WEIGHTS, file_identity, key_of, read_tensors, source_hash
from .config import CsmArgs, Layout
from .quantize import ACTIVATIONS, Quantization, quantize
from .repository import CONFIG_FILE, ModelRepository

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


def load_model(repository: ModelRepository, device: torch.device, dtype: torch.dtype, progress: LoadProgress,
               quantization: Quantization = Quantization.NONE) -> CSM:
    """The model of the repository's config with its weights, quantized (`quantize`). Int8 weights come from the cache
    when it holds them for these files, memory-mapped; else they are made from the checkpoint and cached.
    (int8-dynamic's weights are packed by fbgemm: not tensors to save, they are made at every start.)"""
    key = int8_weights_key(repository, dtype) if quantization is Quantization.INT8 else None
    if key is not None:
        model = _int8_shell(repository.args, dtype)
        state = INT8_WEIGHTS.read(key, lambda path: read_tensors(path, model.state_dict()), DAMAGED_TENSORS)
        if state is not None:
            model.load_state_dict(state, strict=True, assign=True)
            model.eval().requires_grad_(False)
            model.setup()
            return model
    model = _checkpoint_model(repository, device, dtype, progress)
    quantize(model, quantization)
    if key is not None:
        with progress.steps_task("caching the int8 weights", 1) as done:
            INT8_WEIGHTS.write(key, lambda path: torch.save(_own_storages(model.state_dict()), path))
            done()
    return model


def _checkpoint_model(repository: ModelRepository, device: torch.device, dtype: torch.dtype,
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


# --- int8 weights in the cache ------------------------------------------------------------------------------------

# The code that makes an entry: a change to it (a new layout of the tensors, another rounding) makes new entries.
MAKERS = ("loading/checkpoint.py", "loading/config.py", "loading/quantize.py", "generation/args.py",
          "generation/model.py")


def weights_key_parts(repository: ModelRepository, quantization: Quantization, dtype: torch.dtype,
                      makers: tuple[str, ...] = MAKERS) -> dict[str, object]:
    """What anything made from a repository's weights depends on: the files (`cache.file_identity`: no file is read),
    the quantization, the dtype of the rest, csm's version and the code that makes it (`makers`)."""
    files = [repository.directory / CONFIG_FILE, *repository.weights]
    return {"quantization": str(quantization), "dtype": str(dtype), "csm": version("csm-cli"),
            "code": source_hash(*makers), "files": [file_identity(file) for file in files]}


def int8_weights_key(repository: ModelRepository, dtype: torch.dtype) -> str:
    return key_of(weights_key_parts(repository, Quantization.INT8, dtype))


def cache_int8_weights(repository: ModelRepository, progress: LoadProgress) -> Path | None:
    """Makes the int8 weights of a repository and caches them, unless they are cached already: their entry (None if
    the cache cannot be written)."""
    dtype = ACTIVATIONS[Quantization.INT8]
    load_model(repository, torch.device("cpu"), dtype, progress, Quantization.INT8)
    entry = INT8_WEIGHTS.path(int8_weights_key(repository, dtype))
    return entry if entry.exists() else None


def _int8_shell(args: CsmArgs, dtype: torch.dtype) -> CSM:
    """The int8 model of `args` on the meta device: its layers without weights."""
    with torch.device("meta"):
        model = CSM(args).to(dtype)
        quantize(model, Quantization.INT8)
    return model


def _own_storages(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors that are all of their storage: torch.save writes a view's whole storage."""
    return {name: tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()
            for name, tensor in state.items()}
