from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csm_cli.audio import SAMPLE_RATE
from csm_cli.errors import CsmError
from csm_cli.voice import load_voice_prompt

TONE_HZ = 440.0


def _tone(rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


@pytest.mark.parametrize(
    ("name", "rate", "channels", "subtype"),
    [
        ("stereo.wav", 44_100, 2, "PCM_16"),
        ("mono.flac", 16_000, 1, "PCM_16"),
        ("vorbis.ogg", 48_000, 1, "VORBIS"),
        ("eight_bit.wav", 22_050, 1, "PCM_U8"),
        ("twenty_four_bit.wav", 8_000, 3, "PCM_24"),
    ],
)
def test_voice_prompt_is_24khz_mono_float32_of_the_same_duration_and_pitch(
    tmp_path: Path, name: str, rate: int, channels: int, subtype: str
) -> None:
    tone = _tone(rate)
    path = tmp_path / name
    sf.write(path, np.repeat(tone[:, None], channels, axis=1), rate, subtype=subtype)

    prompt = load_voice_prompt(path)

    assert prompt.dtype == np.float32
    assert prompt.ndim == 1
    assert abs(len(prompt) - len(tone) * SAMPLE_RATE / rate) <= 1
    assert abs(_peak_hz(prompt, SAMPLE_RATE) - TONE_HZ) <= 2
    assert 0.45 < np.abs(prompt).max() < 0.55


def test_voice_prompt_mixes_channels_to_their_mean(tmp_path: Path) -> None:
    tone = _tone(SAMPLE_RATE)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone, 0.5 * tone], axis=1), SAMPLE_RATE, subtype="FLOAT")

    np.testing.assert_allclose(load_voice_prompt(path), 0.75 * tone, atol=1e-7)


def _error(path: Path) -> str:
    with pytest.raises(CsmError) as error:
        load_voice_prompt(path)
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    return message


def test_missing_voice_prompt(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nobody.wav")


def test_directory_as_voice_prompt(tmp_path: Path) -> None:
    assert "cannot read" in _error(tmp_path)


def test_undecodable_voice_prompt_names_the_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("not audio at all\n")
    message = _error(path)
    assert "cannot decode" in message
    assert all(name in message for name in ("WAV", "FLAC", "OGG"))


@pytest.mark.parametrize("samples", [np.zeros(SAMPLE_RATE), np.full(SAMPLE_RATE, 5e-5)])
def test_silent_voice_prompt(tmp_path: Path, samples: np.ndarray) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, samples, SAMPLE_RATE, subtype="FLOAT")
    assert "is silent" in _error(path)


def test_empty_voice_prompt(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0), SAMPLE_RATE)
    assert "is empty" in _error(path)
