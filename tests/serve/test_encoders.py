"""The server's response formats, encoded chunk by chunk: the first bytes come with the first chunks, and FFmpeg
decodes the whole to the samples of the pcm format (within the codec's loss)."""

import numpy as np
import pytest
from decoded import assert_holds_pcm

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_cli.output.pcm import to_pcm16
from csm_cli.serve.encoders import ENCODERS

CHUNKS = 8


def speech_like() -> np.ndarray:
    """A tone that rises and swells, with a little noise: 8 frames of 80 ms."""
    t = np.arange(CHUNKS * SAMPLES_PER_FRAME) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * (180 * t + 200 * t**2)) * (0.3 + 0.2 * np.sin(2 * np.pi * 3 * t))
    return (tone + 0.01 * np.random.default_rng(0).standard_normal(len(t))).astype(np.float32)


@pytest.mark.parametrize("response_format", list(ENCODERS))
def test_each_format_streams_from_its_first_chunks_and_holds_the_pcm_samples(response_format):
    samples = speech_like()
    encoder = ENCODERS[response_format]()
    sent = [encoder.encode(chunk) for chunk in np.split(samples, CHUNKS)]
    assert sent[0] or sent[1], "no bytes after two chunks of 80 ms"
    assert sum(bool(data) for data in sent) >= CHUNKS - 2, "bytes were held back"
    assert_holds_pcm(b"".join(sent) + encoder.finish(), response_format, to_pcm16(samples))
