"""Chunks as the bytes of a response format, for the server: 16-bit PCM, WAV and FLAC, each streamed chunk by chunk.
A stream's header cannot be rewritten once sent, so WAV and FLAC headers say that the length is unknown."""

import os
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


class _AppendedBytes:
    """A file libsndfile writes a stream into: `take()` hands on the bytes appended since the last take. Rewrites
    of bytes already handed on (a FLAC header's length and checksum, at close) are dropped: a stream cannot take
    them back."""

    def __init__(self) -> None:
        self._pending = bytearray()  # the bytes from offset `_taken` on
        self._taken = 0
        self._position = 0

    def write(self, data: bytes) -> int:
        start = self._position
        self._position += len(data)
        skipped = max(self._taken - start, 0)
        if skipped < len(data):
            offset = start + skipped - self._taken
            assert offset <= len(self._pending), "libsndfile left a gap"
            self._pending[offset:offset + len(data) - skipped] = bytes(data)[skipped:]
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        origin = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._taken + len(self._pending)}
        self._position = origin[whence] + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        data = bytes(self._pending)
        self._taken += len(data)
        self._pending.clear()
        return data


class FlacEncoder:
    """FLAC frames as libFLAC completes them (a frame holds 4096 samples: bytes come every other chunk or so). The
    header's total length and checksum are left unknown (zero), as FLAC allows for streams."""

    media_type = "audio/flac"

    def __init__(self) -> None:
        self._file = _AppendedBytes()
        self._flac = sf.SoundFile(self._file, "w", SAMPLE_RATE, 1, "PCM_16", format="FLAC")

    def encode(self, samples: np.ndarray) -> bytes:
        self._flac.write(np.frombuffer(to_pcm16(samples), dtype="<i2"))  # the same 16-bit samples as pcm
        return self._file.take()

    def finish(self) -> bytes:
        self._flac.close()
        return self._file.take()


ENCODERS = {"pcm": PcmEncoder, "wav": WavEncoder, "flac": FlacEncoder}
