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

_MIMI_FILE = "Mimi's safetensors file (moshi's tokenizer-e351c8d8-checkpoint125.safetensors)"


class Codec:
    def __init__(self, mimi: torch.nn.Module) -> None:
        self.mimi = mimi
        self.device = next(mimi.parameters()).device

    @classmethod
    def load(cls, path: Path, device: torch.device) -> "Codec":
        from moshi.models import loaders
        from safetensors import SafetensorError

        if path.is_dir():
            raise CsmError(f"codec file {path} is a directory: give {_MIMI_FILE}")
        if not path.is_file():
            raise CsmError(f"codec file {path} does not exist: give {_MIMI_FILE}")
        if path.suffix != ".safetensors":  # moshi would unpickle any other file with torch.load
            raise CsmError(f"codec file {path} is not a .safetensors file: give {_MIMI_FILE}")
        try:
            mimi = loaders.get_mimi(path, device=device, num_codebooks=NUM_CODEBOOKS)
        except (RuntimeError, SafetensorError, KeyError, OSError, ValueError) as e:
            raise CsmError(f"{path} is not a Mimi checkpoint ({first_line(e)}): give {_MIMI_FILE}") from None
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

    def decode_streams(self, streams: int = 1) -> "DecodeStreams":
        """Fresh streaming decodes of their own, for utterances that may interleave with others."""
        return DecodeStreams(self, streams)

    def mimi_input(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [C, n] (or a batch [B, C, n]) -> Mimi's input [B, C, n] on its device, clamped to Mimi's 2048 codes
        (the model's vocabulary has 3 more, which a trained model does not emit)."""
        codes = codes.to(self.device).clamp(max=CODEC_CARDINALITY - 1)
        return codes if codes.ndim == 3 else codes.unsqueeze(0)

    @staticmethod
    def _to_samples(pcm: torch.Tensor) -> np.ndarray:
        return pcm[0, 0].float().cpu().numpy()


class DecodeStreams:
    """Mimi's streaming decode of `streams` utterances together, a batch row each (moshi keeps a state per row): a row
    is reset when an utterance starts on it, and a decode advances only the rows given. The state is bound to Mimi
    only while these streams decode, so that utterances of other streams decode interleaved, each continuing its own
    state; whatever Mimi had bound before (nothing, so that its encoder encodes context audio whole, or the fast
    path's graphed decode state) is bound again after each call."""

    def __init__(self, codec: Codec, streams: int) -> None:
        self._codec = codec
        self.streams = streams
        mimi = codec.mimi
        bound = mimi.get_streaming_state()
        mimi.set_streaming_state(dict.fromkeys(bound))
        try:
            with mimi.streaming(streams):
                self._state = mimi.get_streaming_state()
        finally:
            mimi.set_streaming_state(bound)

    @contextmanager
    def _bound(self) -> Iterator[torch.nn.Module]:
        mimi = self._codec.mimi
        bound = mimi.get_streaming_state()
        mimi.set_streaming_state(self._state)
        try:
            yield mimi
        finally:
            mimi.set_streaming_state(bound)

    @torch.inference_mode()
    def reset(self, row: int) -> None:
        """Row `row` starts a new utterance."""
        with self._bound() as mimi:
            mimi.reset_streaming(self._rows([row]))

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, rows: list[int]) -> np.ndarray:
        """Codes [streams, C, n] of the next n frames -> samples [streams, n * 1920], continuing the state of each
        row in `rows`; the other rows' codes are not read, their state stays and their samples are not defined."""
        with self._bound() as mimi:
            mimi.set_exec_mask(self._rows(rows))
            pcm = mimi.decode(self._codec.mimi_input(codes))
        return pcm[:, 0].float().cpu().numpy()

    def _rows(self, rows: list[int]) -> torch.Tensor:
        mask = torch.zeros(self.streams, dtype=torch.bool)
        mask[rows] = True
        return mask
