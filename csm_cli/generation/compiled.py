"""The frame engine's step compiled by `torch.compile` (inductor) on a CPU: `--compile`.

The engine runs one step (`FrameEngine.frame_step`), eagerly, compiled or replayed as CUDA graphs. Compiled, the
depth decoder's pass of a codebook (`CSM.decoder_hidden`, 31 calls a frame, three quarters of the weights a frame
reads: 115 MB of int8, 31 times) runs as inductor's code; the codebook's head stays eager, so that one compiled pass
serves them all, and so does the frame's first pass (two positions: `compiled_decoder`), so that one graph serves a
bucket. Shapes are dynamic, so that the rows of a bucket never compile again. The backbone's step, sampling, Mimi and
the prefill stay eager: the backbone compiled was no faster (README, "Compiled frame step").

torch's int8 product for a row (`_weight_int8pack_mm`) is bound by its arithmetic, not by memory, at the decoder's
1024 inputs. So in the int8 mode the decoder is compiled frozen (`FROZEN`): its weights become constants of the code,
which inductor's C++ GEMM template packs for its own vectorised product, twice as fast (other modes' weights would be
packed by oneDNN, which torch's caches cannot keep). The packed weights are part of the compiled code and of what
torch's caches keep, which torch does not key by the weights' values: so the caches (inductor's FX graphs and
AOTAutograd's, in `TORCHINDUCTOR_CACHE_DIR`) are an entry of csm's cache per torch version and decoder weights
(`weights_key`), and only a model's first run compiles in full. The compile happens when the engine is made, on a
warm-up step of each bucket; if it fails (no C++ compiler, say) a warning says so and the step runs eagerly.
"""

import hashlib
import time
import warnings
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING

import torch

from ..errors import CsmWarning, first_line
from ..loading.cache import key_of, use_compiled_cache
from ..loading.quantize import Quantization, quantization_of
from .sampling import FEWEST_CANDIDATES

if TYPE_CHECKING:
    from .engine import FrameEngine
    from .model import CSM, KVCache

# The positions a warm-up step attends to: any count from 2 to the window runs the same code (0 and 1 would be
# constants of the graph).
WARMUP_ATTENDED = 2

# inductor's settings for the depth decoder: its weights folded into the code (freezing) and its products chosen
# among inductor's C++ GEMM template and torch's kernel by timing each (max_autotune), its tables not printed.
FROZEN = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
          "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


def weights_key(model: "CSM") -> str:
    """The key of `model`'s compiled code in csm's cache: torch's version and a hash of every tensor the frozen piece
    folds in (the depth decoder's and its input projection's), read from memory (CSM-1B: 115 MB, about 0.1 s)."""
    digest = hashlib.sha256()
    modules = (("projection", model.projection), ("decoder", model.decoder))
    for prefix, module in modules:
        for name, tensor in chain(module.named_parameters(prefix), module.named_buffers(prefix)):
            digest.update(f"{name} {tensor.dtype} {list(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().data)
    return key_of({"torch": torch.__version__, "weights": digest.hexdigest()})


def compiled_decoder(model: "CSM", settings: dict[str, object]) -> Callable[..., torch.Tensor]:
    """`model.decoder_hidden` of one position a row compiled with inductor's `settings`, which apply to each of its
    compiles, whenever it happens; the frame's first pass (two positions: the backbone's state and codebook 0's
    embedding) runs eagerly, so that one graph serves a bucket's 30 others."""
    compiled = torch.compile(model.decoder_hidden, dynamic=True)

    def decoder_hidden(h: torch.Tensor, positions: torch.Tensor, caches: list["KVCache"]) -> torch.Tensor:
        if h.shape[1] > 1:
            return model.decoder_hidden(h, positions, caches)
        with torch._inductor.config.patch(settings):
            return compiled(h, positions, caches)

    return decoder_hidden


def compile_step(engine: "FrameEngine") -> float | None:
    """Compiles the depth decoder's pass of `engine`'s step and warms each bucket up (its rows write at the scratch
    position; the hidden states and codes are kept) -> the seconds it took; None, with a warning, if compiling
    failed, the step left eager."""
    from .engine import buckets

    model, eager = engine.model, engine.decoder_hidden
    use_compiled_cache(weights_key(model))
    # autotuning calls tensor.storage(), whose deprecation would be the user's to read
    warnings.filterwarnings("ignore", "TypedStorage is deprecated", UserWarning, r"torch\._inductor")
    engine.decoder_hidden = compiled_decoder(model, FROZEN if quantization_of(model) is Quantization.INT8 else {})
    kept = engine.last_h.clone(), engine.codes.clone()
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for rows in buckets(engine.slots):
                engine.frame_step(rows, FEWEST_CANDIDATES, WARMUP_ATTENDED)
    except Exception as e:  # inductor's failures have no common type: a missing compiler, a lowering, ...
        warnings.warn(f"compiling the frame step failed ({first_line(e)}): it runs eagerly", CsmWarning,
                      stacklevel=3)
        engine.decoder_hidden = eager
        return None
    finally:
        engine.last_h.copy_(kept[0])
        engine.codes.copy_(kept[1])
    return time.perf_counter() - started
