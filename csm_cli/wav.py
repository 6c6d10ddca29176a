"""A 16-bit PCM WAV file written chunk by chunk, valid on disk after every chunk."""

import struct
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

import numpy as np

from .audio import SAMPLE_RATE
from .errors import CsmError

_BYTES_PER_SAMPLE = 2


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM, clipped."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


UNKNOWN_LENGTH = 0xFFFFFFFF  # the data size a WAV header carries while its length is not known (a stream)


def wav_header(data_bytes: int, sample_rate: int = SAMPLE_RATE) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV holding `data_bytes` bytes of samples (or UNKNOWN_LENGTH)."""
    byte_rate = sample_rate * _BYTES_PER_SAMPLE
    return (
        b"RIFF" + struct.pack("<I", min(36 + data_bytes, UNKNOWN_LENGTH)) + b"WAVE"
        + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, byte_rate, _BYTES_PER_SAMPLE, 16)
        + b"data" + struct.pack("<I", data_bytes)
    )


class WavWriter:
    """Appends float32 chunks to a mono WAV file and rewrites the header sizes after each one,
    so that an interrupted run leaves a playable file holding every chunk written so far.
    The file is created with the first chunk: a run that fails before any audio leaves none."""

    def __init__(self, path: Path | str, sample_rate: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.samples_written = 0
        self._file: BinaryIO | None = None

    def _open(self) -> BinaryIO:
        try:
            file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise CsmError(f"cannot write {self.path}: {e.strerror}") from None
        file.write(self._header(0))
        return file

    def _header(self, data_bytes: int) -> bytes:
        return wav_header(data_bytes, self.sample_rate)

    def write(self, samples: np.ndarray) -> None:
        if self._file is None:
            self._file = self._open()
        self._file.seek(0, 2)
        self._file.write(to_pcm16(samples))
        self.samples_written += len(samples)
        self._file.seek(0)
        self._file.write(self._header(self.samples_written * _BYTES_PER_SAMPLE))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
