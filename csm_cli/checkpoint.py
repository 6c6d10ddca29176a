"""Where the weights, tokenizer and codec come from (a Hugging Face hub id through huggingface_hub and its cache,
or a local path) and how the weights of either checkpoint layout become a `CSM`."""

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import CsmArgs, Layout, parse_config
from .errors import CsmError
from .model import CSM
from .progress import LoadProgress

MODEL_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json"]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]


@contextmanager
def _hub_errors(repo_id: str) -> Iterator[None]:
    """Turns huggingface_hub's failures into one line that says what to do."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise CsmError(
            f"{repo_id} is gated: accept its terms at https://huggingface.co/{repo_id}, then log in with "
            "`hf auth login` or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise CsmError(
            f"{repo_id} is neither a local directory nor a model on the Hugging Face hub "
            "(if it is private, log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    except HFValidationError:
        raise CsmError(f"{repo_id} is neither a local directory nor a valid hub id (owner/name)") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise CsmError(
            f"{why} and {repo_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): "
            "download it once online, or pass a local directory"
        ) from None
    except HfHubHTTPError as e:
        raise CsmError(f"downloading {repo_id} failed: {str(e).splitlines()[0]}") from None


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def resolve_repo(source: str, files: list[str], progress: LoadProgress) -> Path:
    """A local directory as is, or a hub repo's `files` from the cache, downloading what is missing."""
    from huggingface_hub import snapshot_download

    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if _looks_like_path(source):
        raise CsmError(f"directory {source} does not exist")
    with _hub_errors(source):
        return Path(snapshot_download(source, allow_patterns=files, tqdm_class=progress.tqdm_class()))


def resolve_hub_file(repo_id: str, filename: str, progress: LoadProgress) -> Path:
    from huggingface_hub import hf_hub_download

    with _hub_errors(repo_id):
        return Path(hf_hub_download(repo_id, filename, tqdm_class=progress.tqdm_class()))


def read_config(model_dir: Path) -> tuple[Layout, CsmArgs]:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise CsmError(f"{model_dir} has no config.json: it is not a CSM checkpoint")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CsmError(f"{config_file} is not valid JSON ({e})") from None
    return parse_config(config)


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


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / shard for shard in shards]
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise CsmError(f"{model_dir} has no model.safetensors")
    return [single]


def load_model(model_dir: Path, device: torch.device, dtype: torch.dtype, progress: LoadProgress) -> CSM:
    """Builds the model of `model_dir`'s config.json and fills it with its weights, tensor by tensor."""
    from safetensors import safe_open

    layout, args = read_config(model_dir)
    state: dict[str, torch.Tensor] = {}
    files = _weight_files(model_dir)
    with progress.bytes_task("loading weights", sum(f.stat().st_size for f in files)) as advance:
        for file in files:
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
    with torch.device("meta"):
        model = CSM(args)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise CsmError(f"the weights in {model_dir} do not match its config.json: {detail}") from None
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
