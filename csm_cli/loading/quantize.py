"""Int8 weights for the CPU, with the kernels torch ships: the transformers' linear layers (backbone and depth
decoder) and the projection between them, 97% of the weights a frame reads, are quantized per output channel,
symmetric; embeddings, norms, heads and the KV caches keep the model's dtype. At batch 1 a CPU frame is bound by
reading weights, so fewer bytes per weight is most of the speed.

- `int8`: int8 weights, bfloat16 activations (`aten._weight_int8pack_mm`): a quarter of float32's bytes; the
  logits stay within cosine 0.99 of float32 (README, "Performance"). A product of many rows (a prompt's prefill) is
  arithmetic rather than reading weights: there, on a CPU that multiplies bfloat16 natively, each layer's weight is
  converted to bfloat16 for the call and multiplied by torch's 16-bit product, three times as fast;
- `int8-dynamic`: int8 weights and activations quantized per row as they come (fbgemm's dynamic linear), float32
  elsewhere: faster, and further from float32.
"""

import functools
import warnings
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CsmError


class Quantization(StrEnum):
    NONE = "none"
    INT8 = "int8"
    INT8_DYNAMIC = "int8-dynamic"


# The dtype of everything a mode leaves unquantized: the activations its kernels take.
ACTIVATIONS = {Quantization.INT8: torch.bfloat16, Quantization.INT8_DYNAMIC: torch.float32}


DEFAULT_CPU = Quantization.INT8


def resolve_quantization(quantize: str | Quantization | None, device: torch.device,
                         dtype_given: bool = False) -> Quantization:
    """The mode asked for, or the default: `DEFAULT_CPU` on a CPU unless a dtype is given, none elsewhere."""
    if quantize is None:
        return DEFAULT_CPU if device.type == "cpu" and not dtype_given else Quantization.NONE
    try:
        mode = Quantization(quantize)
    except ValueError:
        raise CsmError(f"unknown quantization {quantize!r} (choose from {', '.join(Quantization)})") from None
    if mode is not Quantization.NONE and device.type != "cpu":
        raise CsmError(f"--quantize {mode} runs on the CPU only: use --quantize none on {device}")
    return mode


def activation_dtype(mode: Quantization, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype of a quantized model's other weights and activations; a dtype given must be that one."""
    wanted = ACTIVATIONS[mode]
    if dtype is not None and dtype != wanted:
        name = str(wanted).removeprefix("torch.")
        raise CsmError(f"--quantize {mode} computes in {name}: leave --dtype out or give --dtype {name}")
    return wanted


def _int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] -> int8 weights [N, K] and float32 scales [N], one per output row (symmetric, -127..127)."""
    if weight.is_meta:  # a shell for weights to come: arithmetic on the meta device imports torch._dynamo (1-2 s)
        return torch.empty(weight.shape, dtype=torch.int8, device="meta"), torch.empty(len(weight), device="meta")
    w = weight.float()
    scales = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
    return torch.round(w / scales[:, None]).to(torch.int8), scales


# From this many rows on, a layer's product converts its weight to bfloat16 for the call, where the CPU multiplies
# bfloat16 natively (README, "On a CPU": 5 against 15 ms a prompt row on 2 cores; the same at 64 rows). Elsewhere
# torch's 16-bit product is slower than the int8 kernel at any number of rows (measured with AVX2 only).
DEQUANTIZED_ROWS = 128


@functools.cache
def dequantized_rows() -> int | None:
    """The rows from which an int8 layer multiplies in 16-bit here: `DEQUANTIZED_ROWS` on a CPU that multiplies
    bfloat16 natively, None (never) elsewhere."""
    return DEQUANTIZED_ROWS if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


class Int8Linear(nn.Module):
    """A bias-free linear layer with int8 weights, computing in the activations' dtype: by the int8 kernel, or with
    its weight converted to 16-bit for a product of at least `dequantized_rows` rows (None: never)."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        weight, scales = _int8_rows(linear.weight)
        # parameters, not buffers: a compiled step folds a model's parameters into its code (`generation/compiled.py`)
        self.weight = nn.Parameter(weight, requires_grad=False)  # [N, K]
        self.scales = nn.Parameter(scales.to(dtype), requires_grad=False)  # [N]
        self.dequantized_rows = dequantized_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [R, K]
        if self.dequantized_rows is not None and len(rows) >= self.dequantized_rows:
            out = F.linear(rows, self.weight.to(rows.dtype)) * self.scales  # int8 values are exact in bfloat16
        else:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scales)
        return out.view(*x.shape[:-1], -1)


class DynamicInt8Linear(nn.Module):
    """A bias-free linear layer with int8 weights that quantizes its float32 input per row as it comes."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight, scales = _int8_rows(linear.weight)
        zero = torch.zeros(len(scales), dtype=torch.long)
        with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm's packed weights still need one
            warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
            quantized = torch._make_per_channel_quantized_tensor(weight, scales.double(), zero, 0)
        self.packed = torch.ops.quantized.linear_prepack(quantized, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, True)  # 7-bit activations: no overflow on AVX2


def set_dequantized_rows(model: nn.Module, rows: int | None) -> None:
    """Sets the number of rows from which `model`'s int8 layers multiply in 16-bit (None: never; 1: always)."""
    for module in model.modules():
        if isinstance(module, Int8Linear):
            module.dequantized_rows = rows


def quantization_of(model: nn.Module) -> Quantization:
    """The mode `quantize` applied to `model`."""
    for module in model.modules():
        if isinstance(module, Int8Linear):
            return Quantization.INT8
        if isinstance(module, DynamicInt8Linear):
            return Quantization.INT8_DYNAMIC
    return Quantization.NONE


def quantize(model: nn.Module, mode: Quantization) -> None:
    """Replaces, in place, the linear layers of `model`'s transformers (`backbone`, `decoder`) and the projection
    between them by `mode`'s."""
    if mode is Quantization.NONE:
        return

    def quantized(linear: nn.Linear) -> nn.Module:
        return Int8Linear(linear, ACTIVATIONS[mode]) if mode is Quantization.INT8 else DynamicInt8Linear(linear)

    for transformer in (model.backbone, model.decoder):
        # parents only: a list holding the linear layers would keep their weights alive until the end
        for parent in [module for module in transformer.modules() if not isinstance(module, nn.Linear)]:
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, quantized(child))
    model.projection = quantized(model.projection)
