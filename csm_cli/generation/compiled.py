"""The frame engine's step compiled by `torch.compile` (inductor) on a CPU: `--compile`.

The engine runs one step (`FrameEngine.frame_step`), eagerly, compiled or replayed as CUDA graphs. Compiled, the two
model pieces it calls that hold almost all of its work run as inductor's code: the depth decoder's pass that gives a
codebook's logits (`CSM.decoder_logits`, 31 calls a frame) and the backbone's step of the frame's row
(`CSM.backbone_step`). Each is compiled apart, so that one compiled decoder pass serves codebooks 2..31 (the codebook
is an integer of the graph, not a constant): the step unrolled whole is thousands of kernels, minutes to compile.
Shapes are dynamic, so that the positions attended (those filled: one more every frame) and the rows of a bucket
never compile again. Sampling, Mimi and the prefill stay eager.

torch's caches (inductor's FX graphs and AOTAutograd's, in `TORCHINDUCTOR_CACHE_DIR`, which the loader points at
csm's cache) keep the compiled code between runs, so that only the first run compiles in full. The compile happens
when the engine is made, on a warm-up step of each bucket; if it fails (no C++ compiler, say) a warning says so and
the step runs eagerly.
"""

import time
import warnings
from typing import TYPE_CHECKING

import torch

from ..errors import CsmWarning, first_line
from .sampling import FEWEST_CANDIDATES

if TYPE_CHECKING:
    from .engine import FrameEngine

# The positions a warm-up step attends to: any count from 2 to the window runs the same code (0 and 1 would be
# constants of the graph).
WARMUP_ATTENDED = 2


def compile_step(engine: "FrameEngine") -> float | None:
    """Compiles the pieces of `engine`'s step and warms each bucket up (its rows write at the scratch position; the
    hidden states and codes are kept) -> the seconds it took; None, with a warning, if compiling failed, the step
    left eager."""
    from .engine import buckets

    model, eager = engine.model, engine.pieces
    engine.pieces = (torch.compile(model.decoder_logits, dynamic=True),
                     torch.compile(model.backbone_step, dynamic=True))
    kept = engine.last_h.clone(), engine.codes.clone()
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for rows in buckets(engine.slots):
                engine.frame_step(rows, FEWEST_CANDIDATES, WARMUP_ATTENDED)
    except Exception as e:  # inductor's failures have no common type: a missing compiler, a lowering, ...
        warnings.warn(f"compiling the frame step failed ({first_line(e)}): it runs eagerly", CsmWarning,
                      stacklevel=3)
        engine.pieces = eager
        return None
    finally:
        engine.last_h.copy_(kept[0])
        engine.codes.copy_(kept[1])
    return time.perf_counter() - started
