"""Chunks as the bytes of a response format, for the server: OpenAI's six (mp3, opus, aac, flac, wav, pcm), each
streamed chunk by chunk, so that the first bytes leave with the first frames.

The compressed formats are FFmpeg's encoders and muxers (PyAV), writing into a stream that cannot seek: each packet
is handed on as soon as the muxer writes it, and nothing written is rewritten later. The containers are OpenAI's:
raw MPEG frames for mp3 (no ID3 tag), Ogg for opus, ADTS for aac, a FLAC stream whose header leaves the length
unknown (zero), as FLAC allows for streams. A WAV header says its length is unknown, as streamed WAV does.
"""

import struct
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import av
import numpy as np

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


@dataclass(frozen=True)
class Codec:
    """A response format made by FFmpeg: its Content-Type, muxer, encoder, bit rate and muxer options."""

    media_type: str
    container: str
    encoder: str
    bit_rate: int | None = None
    options: dict[str, str] = field(default_factory=dict)


CODECS = {
    "mp3": Codec("audio/mpeg", "mp3", "libmp3lame", 64_000, {"id3v2_version": "0"}),  # MPEG frames only
    "opus": Codec("audio/opus", "ogg", "libopus", 32_000, {"page_duration": "80000"}),  # a page per 80 ms, not 1 s
    "aac": Codec("audio/aac", "adts", "aac", 64_000),
    "flac": Codec("audio/flac", "flac", "flac"),
}


class _Written:
    """What a muxer writes, taken as it comes. Having no `seek`, it tells FFmpeg that it is a stream."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class CodecEncoder:
    """A stream of `codec`'s packets, muxed as they come out of the encoder (whose frames hold 576 to 4608 samples,
    so a chunk of 1920 yields bytes or fills the next frame); the encoder is given the same 16-bit samples as pcm."""

    def __init__(self, codec: Codec) -> None:
        self.media_type = codec.media_type
        self._written = _Written()
        self._container = av.open(self._written, "w", format=codec.container, options=codec.options,
                                  container_options={"flush_packets": "1"})
        self._stream = self._container.add_stream(codec.encoder, rate=SAMPLE_RATE, layout="mono")
        if codec.bit_rate is not None:
            self._stream.bit_rate = codec.bit_rate
        self._samples = 0

    def encode(self, samples: np.ndarray) -> bytes:
        pcm = np.frombuffer(to_pcm16(samples), dtype="<i2")
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self._samples
        self._samples += len(pcm)
        self._container.mux(self._stream.encode(frame))
        return self._written.take()

    def finish(self) -> bytes:
        self._container.mux(self._stream.encode(None))
        self._container.close()
        return self._written.take()


ENCODERS = {
    **{name: partial(CodecEncoder, codec) for name, codec in CODECS.items()},
    "wav": WavEncoder,
    "pcm": PcmEncoder,
}
"""OpenAI's response formats, in its order, each a factory of a new stream's encoder."""
