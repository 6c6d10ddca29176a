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
        byte_rate = self.sample_rate * _BYTES_PER_SAMPLE
        return (
            b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, self.sample_rate, byte_rate, _BYTES_PER_SAMPLE, 16)
            + b"data" + struct.pack("<I", data_bytes)
        )

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
