"""Audio of a response format decoded by FFmpeg (PyAV), as voice agents' clients decode it, and held to the samples the
pcm format gives: the same samples for the lossless formats, the same signal within the codec's loss for the others."""

import io

import av
import numpy as np
import soxr

from csm_cli.audio import SAMPLE_RATE

LOSSLESS = ("pcm", "wav", "flac")
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac", "wav": "audio/wav",
               "pcm": "audio/pcm"}
MIN_CORRELATION = 0.75  # lossy codecs at their bit rates, on the tiny model's noise-like speech: 0.87 to 0.95
_MAX_DELAY = 2048  # samples a lossy encoder may put before the signal (LAME 1105, AAC 1024)
_RESAMPLING_SLACK = 64  # samples at the end that resampling from 48 kHz may round away


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """The 16-bit mono samples FFmpeg decodes from a file's bytes, and their rate."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono")
        frames = [out for frame in container.decode(stream) for out in resampler.resample(frame)]
        return np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames]), stream.codec_context.sample_rate


def without_dc(samples: np.ndarray) -> np.ndarray:
    """The signal less its moving mean over 10 ms: Opus drops the DC offset the tiny model's random Mimi makes."""
    width = SAMPLE_RATE // 100
    return samples - np.convolve(samples, np.ones(width) / width, mode="same")


def aligned_correlation(expected: np.ndarray, decoded: np.ndarray) -> tuple[float, int]:
    """The best normalised correlation of `decoded` against `expected` delayed by 0 to _MAX_DELAY samples, over all of
    `expected` but its last _RESAMPLING_SLACK samples: a `decoded` that lacks the end correlates at no delay (-1)."""
    expected = expected[:len(expected) - _RESAMPLING_SLACK]
    best = (-1.0, 0)
    for delay in range(min(_MAX_DELAY, len(decoded) - len(expected)) + 1):
        part = decoded[delay:delay + len(expected)]
        correlation = float(np.dot(expected, part) / (np.linalg.norm(expected) * np.linalg.norm(part) + 1e-12))
        best = max(best, (correlation, delay))
    return best


def assert_holds_pcm(data: bytes, response_format: str, pcm: bytes) -> None:
    expected = np.frombuffer(pcm, dtype="<i2")
    if response_format == "pcm":
        assert data == pcm
        return
    samples, rate = decode(data)
    if response_format in LOSSLESS:
        assert rate == SAMPLE_RATE
        np.testing.assert_array_equal(samples, expected)
        return
    signal = samples.astype(np.float32) / 32768
    if rate != SAMPLE_RATE:  # Opus decodes at 48 kHz
        signal = soxr.resample(signal, rate, SAMPLE_RATE)
    correlation, delay = aligned_correlation(without_dc(expected / 32768), without_dc(signal))
    assert correlation >= MIN_CORRELATION, f"{response_format}: correlation {correlation:.3f} at delay {delay}"
