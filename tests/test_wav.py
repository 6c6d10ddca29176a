import numpy as np
import pytest
import soundfile as sf

from csm_cli.audio import SAMPLE_RATE
from csm_cli.errors import CsmError
from csm_cli.wav import WavWriter, to_pcm16


def test_the_file_is_valid_after_every_chunk_and_created_with_the_first(tmp_path):
    path = tmp_path / "out.wav"
    writer = WavWriter(path)
    assert not path.exists()
    chunks = [np.full(1920, 0.25, dtype=np.float32), np.linspace(-1, 1, 1920, dtype=np.float32)]
    for count, chunk in enumerate(chunks, start=1):
        writer.write(chunk)
        samples, rate = sf.read(str(path), dtype="float32")  # read while the writer still holds the file open
        assert rate == SAMPLE_RATE and len(samples) == 1920 * count
        np.testing.assert_allclose(samples[-1920:], chunk, atol=2 / 32767)  # 16-bit rounding, read back over 32768
    writer.close()
    assert path.stat().st_size == 44 + 2 * 3840


def test_samples_are_clipped_to_16_bits():
    assert np.frombuffer(to_pcm16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])), "<i2").tolist() == [
        -32767, -32767, 0, 16384, 32767, 32767]


def test_an_unwritable_path_is_a_user_error(tmp_path):
    with pytest.raises(CsmError, match="cannot write"):
        WavWriter(tmp_path / "missing" / "out.wav").write(np.zeros(1920, dtype=np.float32))
