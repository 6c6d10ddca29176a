"""Voice prompts: audio files of a speaker, decoded to the codec's 24 kHz mono float32 samples."""

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .audio import SAMPLE_RATE
from .errors import CsmError

_SILENT_PEAK = 1e-4  # -80 dBFS
_COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF")


def load_voice_prompt(path: Path) -> np.ndarray:
    """Reads any audio file libsndfile decodes, mixed to mono and resampled to 24 kHz: float32 [samples]."""
    samples, rate = _read_audio(path)
    mono = samples.mean(axis=1, dtype=np.float32)
    _check_audible(mono, path)
    return _resample_to_codec_rate(mono, rate)


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    """float32 [samples, channels] and the sample rate; failures as CsmError naming the file."""
    try:
        with path.open("rb") as file:
            return sf.read(file, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise CsmError(f"voice prompt {path} does not exist: check the path") from None
    except OSError as e:
        raise CsmError(f"cannot read voice prompt {path} ({e.strerror}): give the path of an audio file") from None
    except sf.SoundFileError:
        supported = ", ".join(name for name in _COMMON_FORMATS if name in sf.available_formats())
        raise CsmError(f"cannot decode voice prompt {path}: use an audio file in one of {supported}") from None


def _check_audible(mono: np.ndarray, path: Path) -> None:
    if mono.size == 0:
        raise CsmError(f"voice prompt {path} is empty: use a recording of the speaker's voice")
    if np.abs(mono).max() < _SILENT_PEAK:
        raise CsmError(f"voice prompt {path} is silent: use a recording of the speaker's voice")


def _resample_to_codec_rate(mono: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return mono
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
