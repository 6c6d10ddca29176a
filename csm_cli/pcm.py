"""Audio leaving the program: raw PCM on a byte stream (``--out -``) and numbered files for ``--out-dir``.

A reader that goes away (``csm say --out - | head -c 1000``) ends the program quietly: RawPcmWriter raises
OutputClosed, and the CLI calls exit_for_closed_output(), which follows the Python docs' note on SIGPIPE
(https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

import os
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Literal, NoReturn

import numpy as np

from .errors import CsmError
from .wav import to_pcm16

PcmFormat = Literal["s16", "f32"]
SIGPIPE_EXIT_STATUS = 128 + signal.SIGPIPE  # 141: what a shell reports for a stage killed by SIGPIPE


def _to_f32le(samples: np.ndarray) -> bytes:
    """Float samples as 32-bit little-endian floats, unclipped."""
    return np.asarray(samples, dtype="<f4").tobytes()


_ENCODERS: dict[PcmFormat, Callable[[np.ndarray], bytes]] = {"s16": to_pcm16, "f32": _to_f32le}


class OutputClosed(Exception):
    """The reader of the PCM stream closed it; end with exit_for_closed_output()."""


class RawPcmWriter:
    """Writes mono chunks as headerless PCM to a binary stream (stdout by default), flushing after each chunk
    so that the reader gets audio as soon as it is made."""

    def __init__(self, stream: BinaryIO | None = None, fmt: PcmFormat = "s16") -> None:
        self.stream = sys.stdout.buffer if stream is None else stream
        self._encode = _ENCODERS[fmt]

    def write(self, samples: np.ndarray) -> None:
        data = self._encode(samples)
        try:
            self.stream.write(data)
            self.stream.flush()
        except BrokenPipeError as e:
            raise OutputClosed("the reader of the audio stream closed it") from e


def exit_for_closed_output() -> NoReturn:
    """Ends the program after its stdout reader left, with status 141 and nothing on stderr.

    stdout is pointed at /dev/null first: otherwise the interpreter's final flush of bytes still buffered for
    stdout fails again, prints "Exception ignored ... BrokenPipeError" and turns the exit status into 120.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(SIGPIPE_EXIT_STATUS)


def numbered_path(directory: Path, index: int, width: int = 4) -> Path:
    """The WAV file of the index-th utterance, zero-padded so that names sort in speaking order: 0001.wav."""
    assert index >= 0, index
    return directory / f"{index:0{width}d}.wav"


def prepare_out_dir(directory: Path) -> Path:
    """Creates the output directory if missing and checks that files can be created in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except FileExistsError:
        raise CsmError(f"output directory {directory} is a file: choose a directory path") from None
    except OSError as e:
        raise CsmError(
            f"cannot write files in output directory {directory} ({e.strerror}): choose a writable directory"
        ) from None
    return directory
