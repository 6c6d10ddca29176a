"""Mimi, the codec between 24 kHz audio and frames of codes, through moshi."""

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from ..audio import CODEC_CARDINALITY, NUM_CODEBOOKS
from ..errors import CsmError, first_line
from ..threads import on_model_thread

# moshi wraps parts of Mimi in a lazy torch.compile unless told not to: a compile at the first call is minutes on a
# CPU and seconds on a GPU, for no gain in streaming decode. Must be set before moshi is imported.
os.environ.setdefault("NO_TORCH_COMPILE", "1")

_MIMI_FILE = "Mimi's safetensors file (moshi's tokenizer-e351c8d8-checkpoint125.safetensors)"


class Codec:
    def __init__(self, mimi: torch.nn.Module) -> None:
        self.mimi = mimi
        self.device = next(mimi.parameters()).device

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "Codec":
        from moshi.models import loaders
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if path.is_dir():
            raise CsmError(f"codec file {path} is a directory: give {_MIMI_FILE}")
        if not path.is_file():
            raise CsmError(f"codec file {path} does not exist: give {_MIMI_FILE}")
        if path.suffix != ".safetensors":  # moshi would unpickle any other file with torch.load
            raise CsmError(f"codec file {path} is not a .safetensors file: give {_MIMI_FILE}")
        try:
            # built empty and given the file's tensors: moshi's loader draws random weights first (0.6 s on a CPU)
            with torch.device("meta"):
                mimi = loaders.get_mimi(None, device="meta", num_codebooks=NUM_CODEBOOKS)
            mimi.load_state_dict(load_file(path, device=str(device)), strict=True, assign=True)
        except (RuntimeError, SafetensorError, KeyError, OSError, ValueError) as e:
            raise CsmError(f"{path} is not a Mimi checkpoint ({first_line(e)}): give {_MIMI_FILE}") from None
        return cls(mimi)

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights' first tensor: codes cached for one Mimi are not taken for another's."""
        first = next(self.mimi.parameters()).detach().float().cpu().numpy()
        return hashlib.sha256(first.tobytes()).hexdigest()[:16]

    @on_model_thread
    @torch.inference_mode()
    def encode(self, samples: np.ndarray) -> torch.Tensor:
        """24 kHz mono samples -> codes [C, T] (a partial last frame is padded)."""
        pcm = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)
        return self.mimi.encode(pcm.view(1, 1, -1))[0]

    @on_model_thread
    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """A whole sequence of codes [C, T] at once -> T * 1920 samples."""
        return self._to_samples(self.mimi.decode(self.mimi_input(codes)))

    def decoder(self, rows: int = 1) -> "MimiDecoder":
        """A streaming decode of `rows` streams of frames, each on a row of its own."""
        return MimiDecoder(self, rows)

    def mimi_input(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [C, n] (or a batch [B, C, n]) -> Mimi's input [B, C, n] on its device, clamped to Mimi's 2048 codes
        (the model's vocabulary has 3 more, which a trained model does not emit)."""
        codes = codes.to(self.device).clamp(max=CODEC_CARDINALITY - 1)
        return codes if codes.ndim == 3 else codes.unsqueeze(0)

    @staticmethod
    def _to_samples(pcm: torch.Tensor) -> np.ndarray:
        return pcm[0, 0].float().cpu().numpy()


def _streaming_parts(module: torch.nn.Module | None) -> list[torch.nn.Module]:
    """The outermost moshi streaming modules in `module`."""
    from moshi.modules.streaming import StreamingModule

    if module is None:
        return []
    if isinstance(module, StreamingModule):
        return [module]
    return [part for child in module.children() for part in _streaming_parts(child)]


class MimiDecoder:
    """Mimi's streaming decode of `rows` streams together, a batch row each (moshi keeps a state per row): a row is
    reset when a stream starts on it, and a decode advances only the rows its mask holds.

    Only the decoder side streams (upsampling, transformer, SEANet decoder): its state is allocated once and reset in
    place, so that its tensors keep their addresses (a CUDA graph replays `decode`), and is bound to those modules
    only inside these calls, so that decoders of other streams interleave with it. Mimi itself never streams: its
    encoder encodes context audio whole, on any thread."""

    def __init__(self, codec: Codec, rows: int) -> None:
        mimi = codec.mimi
        self.codec = codec
        self.rows = rows
        self._parts = [part for name in ("upsample", "decoder_transformer", "decoder")
                       for part in _streaming_parts(getattr(mimi, name, None))]
        with ExitStack() as allocate:
            for part in self._parts:
                allocate.enter_context(part.streaming(rows))
            self._states = [part.get_streaming_state() for part in self._parts]
        self._masks = [state.exec_mask for states in self._states for state in states.values()]

    @contextmanager
    def bound(self) -> Iterator[None]:
        """Mimi's decoder modules streaming on this decoder's state (inside a CUDA graph's capture, say)."""
        for part, state in zip(self._parts, self._states, strict=True):
            part.set_streaming_state(state)
        try:
            yield
        finally:
            for part, state in zip(self._parts, self._states, strict=True):
                part.set_streaming_state(dict.fromkeys(state))

    @torch.inference_mode()
    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Rows [rows] bool (all when None) start new streams."""
        with self.bound():
            for part in self._parts:
                part.reset_streaming(rows)

    def decode(self, codes: torch.Tensor, advancing: torch.Tensor) -> torch.Tensor:
        """Codes [rows, C] of each row's next frame -> samples [rows, 1920] on the device, continuing the state of
        each row that `advancing` [rows] (bool, on the device) holds; the other rows' codes are not read, their state
        stays and their samples are not defined. Call it inside `bound()`."""
        for mask in self._masks:
            mask.copy_(advancing)
        return self.codec.mimi.decode(self.codec.mimi_input(codes.unsqueeze(2)))[:, 0]
