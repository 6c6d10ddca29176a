"""Chunks as the bytes of a response format, for the server: 16-bit PCM and WAV stream chunk by chunk; FLAC comes
whole when the utterance ends, since FLAC readers need the length its header holds."""

import io
import struct
from typing import Protocol

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE
from ..output.pcm import to_pcm16

UNKNOWN_LENGTH = 0xFFFFFFFF  # the data size a WAV header carries while its length is not known (a stream)
_BYTES_PER_SAMPLE = 2


def wav_header(data_bytes: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV holding `data_bytes` bytes of samples (or UNKNOWN_LENGTH)."""
    byte_rate = sample_rate * _BYTES_PER_SAMPLE
    return (
        b"RIFF" + struct.pack("<I", min(36 + data_bytes, UNKNOWN_LENGTH)) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, _BYTES_PER_SAMPLE, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )


class Encoder(Protocol):
    media_type: str

    def encode(self, samples: np.ndarray) -> bytes:
        """The bytes to send for the next chunk (the format's header before the first)."""
        ...

    def finish(self) -> bytes:
        """The bytes to send once the last chunk is encoded."""
        ...


class PcmEncoder:
    media_type = "audio/pcm"

    def encode(self, samples: np.ndarray) -> bytes:
        return to_pcm16(samples)

    def finish(self) -> bytes:
        return b""


class WavEncoder:
    """A WAV stream whose header says its length is unknown, as streamed WAV does."""

    media_type = "audio/wav"

    def __init__(self) -> None:
        self._header = wav_header(UNKNOWN_LENGTH)

    def encode(self, samples: np.ndarray) -> bytes:
        header, self._header = self._header, b""
        return header + to_pcm16(samples)

    def finish(self) -> bytes:
        return self._header


class FlacEncoder:
    media_type = "audio/flac"

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []

    def encode(self, samples: np.ndarray) -> bytes:
        self._chunks.append(samples)
        return b""

    def finish(self) -> bytes:
        samples = np.frombuffer(to_pcm16(np.concatenate(self._chunks or [np.zeros(0, np.float32)])), dtype="<i2")
        file = io.BytesIO()
        sf.write(file, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")  # the same 16-bit samples as pcm
        return file.getvalue()


ENCODERS = {"pcm": PcmEncoder, "wav": WavEncoder, "flac": FlacEncoder}
