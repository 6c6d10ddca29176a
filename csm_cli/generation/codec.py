"""Mimi, the codec between 24 kHz audio and frames of codes, through moshi."""

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..audio import CODEC_CARDINALITY, NUM_CODEBOOKS
from ..errors import CsmError, first_line

# moshi wraps parts of Mimi in a lazy torch.compile unless told not to: a compile at the first call is minutes on a
# CPU and seconds on a GPU, for no gain in streaming decode. Must be set before moshi is imported.
os.environ.setdefault("NO_TORCH_COMPILE", "1")


class Codec:
    def __init__(self, mimi: torch.nn.Module) -> None:
        self.mimi = mimi
        self.device = next(mimi.parameters()).device

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "Codec":
        from moshi.models import loaders
        from safetensors import SafetensorError

        if not path.is_file():
            raise CsmError(f"codec file {path} does not exist")
        try:
            mimi = loaders.get_mimi(path, device=device, num_codebooks=NUM_CODEBOOKS)
        except (RuntimeError, SafetensorError, KeyError, OSError, ValueError) as e:
            raise CsmError(f"{path} is not a Mimi checkpoint ({first_line(e)})") from None
        return cls(mimi)

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights' first tensor: codes cached for one Mimi are not taken for another's."""
        first = next(self.mimi.parameters()).detach().float().cpu().numpy()
        return hashlib.sha256(first.tobytes()).hexdigest()[:16]

    @torch.inference_mode()
    def encode(self, samples: np.ndarray) -> torch.Tensor:
        """24 kHz mono samples -> codes [C, T] (a partial last frame is padded)."""
        pcm = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)
        return self.mimi.encode(pcm.view(1, 1, -1))[0]

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """A whole sequence of codes [C, T] at once -> T * 1920 samples."""
        return self._to_samples(self.mimi.decode(self.mimi_input(codes)))

    @torch.inference_mode()
    def decode_chunk(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [C, n] of the next n frames -> n * 1920 samples, continuing the stream's state."""
        assert self.mimi.is_streaming, "decode_chunk is only valid inside Codec.streaming()"
        return self._to_samples(self.mimi.decode(self.mimi_input(codes)))

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Scope of one utterance's streaming decode; Mimi's state is released on exit, however the block ends."""
        with self.mimi.streaming(1):
            yield

    def decode_stream(self) -> "DecodeStream":
        """A fresh streaming decode of its own, for one utterance that may interleave with others."""
        return DecodeStream(self)

    def mimi_input(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [C, n] -> Mimi's input [1, C, n] on its device, clamped to Mimi's 2048 codes (the model's vocabulary
        has 3 more, which a trained model does not emit)."""
        return codes.to(self.device).clamp(max=CODEC_CARDINALITY - 1).unsqueeze(0)

    @staticmethod
    def _to_samples(pcm: torch.Tensor) -> np.ndarray:
        return pcm[0, 0].float().cpu().numpy()


class DecodeStream:
    """Mimi's streaming decode state of one utterance, bound to Mimi only while this stream decodes: utterances of
    several streams decode interleaved, chunk by chunk, each continuing its own state. Whatever Mimi had bound
    before (nothing, so that its encoder encodes context audio whole, or the fast path's graphed decode state) is
    bound again after each call."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        mimi = codec.mimi
        bound = mimi.get_streaming_state()
        mimi.set_streaming_state(dict.fromkeys(bound))
        try:
            with mimi.streaming(1):
                self._state = mimi.get_streaming_state()
        finally:
            mimi.set_streaming_state(bound)

    def decode_chunk(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [C, n] of the next n frames -> n * 1920 samples, continuing this stream's state."""
        mimi = self._codec.mimi
        bound = mimi.get_streaming_state()
        mimi.set_streaming_state(self._state)
        try:
            return self._codec.decode_chunk(codes)
        finally:
            mimi.set_streaming_state(bound)
