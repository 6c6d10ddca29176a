"""Audio leaving the program as raw PCM on a byte stream (``--out -``).

A reader that goes away (``csm say --out - | head -c 1000``) ends the program quietly: RawPcmWriter raises
OutputClosed, and the CLI calls exit_for_closed_output(), which follows the Python docs' note on SIGPIPE
(https://docs.python.org/3/library/signal.html#note-on-sigpipe).
"""

import os
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO, Literal, NoReturn

import numpy as np

from ..errors import CsmError

PcmFormat = Literal["s16", "f32"]
SIGPIPE_EXIT_STATUS = 128 + signal.SIGPIPE  # 141: what a shell reports for a stage killed by SIGPIPE


def to_pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM, clipped."""
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


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
        except OSError as e:  # a full disk or device, a terminal gone
            raise CsmError(f"writing raw PCM to standard output failed ({e.strerror or e}): write it where there is "
                           "room, or to a file with --out FILE") from None


def exit_for_closed_output() -> NoReturn:
    """Ends the program after its stdout reader left, with status 141 and nothing on stderr.

    stdout is pointed at /dev/null first: otherwise the interpreter's final flush of bytes still buffered for
    stdout fails again, prints "Exception ignored ... BrokenPipeError" and turns the exit status into 120.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(SIGPIPE_EXIT_STATUS)
