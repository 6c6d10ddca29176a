"""Voice prompts: audio files of a speaker, decoded to the codec's 24 kHz mono float32 samples; the voices a model
repository offers (prompts/NAME.wav with known transcripts), which speaker speaks with which, and their codes cached
on disk so that a recording is encoded once."""

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ..audio import SAMPLE_RATE
from ..errors import CsmError
from ..generation.args import MAX_SECONDS
from ..generation.codec import Codec
from ..generation.prompt import Segment
from .cache import VOICE_CODES

_SILENT_PEAK = 1e-4  # -80 dBFS
_COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF")


def load_voice_prompt(path: str | Path) -> np.ndarray:
    """Reads any audio file libsndfile decodes, mixed to mono and resampled to 24 kHz: float32 [samples]. A file
    longer than the model's window is refused from its header, before it is decoded."""
    path = Path(path)
    samples, rate = _read_audio(path)
    if not np.isfinite(samples).all():
        raise CsmError(f"voice prompt {path} holds samples that are not numbers (NaN or infinite): export it again")
    mono = samples.mean(axis=1, dtype=np.float32)
    _check_audible(mono, path)
    return _resample_to_codec_rate(mono, rate)


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    """float32 [samples, channels] and the sample rate; failures as CsmError naming the file."""
    try:
        with path.open("rb") as file:
            seconds = sf.info(file).duration
            if seconds > MAX_SECONDS:
                raise CsmError(f"voice prompt {path} lasts {seconds:.1f} s, longer than the model's whole window of "
                               f"{MAX_SECONDS:g} s: use a shorter recording (the default voices last about 30 s)")
            file.seek(0)
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


# --- voices: recordings given to the model as context so that a speaker keeps one voice --------------------------

# The reference's run_csm.py gives speaker 0 the voice of conversational_a and speaker 1 that of conversational_b.
DEFAULT_VOICES = {0: "conversational_a", 1: "conversational_b"}
NO_VOICE = "none"


@dataclass(frozen=True)
class Voice:
    """A recording of a speaker and what is said in it (`text` None when no transcript is known)."""

    name: str
    path: Path
    text: str | None

    @property
    def seconds(self) -> float | None:
        """The recording's length; None when its file cannot be read as audio."""
        try:
            return sf.info(str(self.path)).duration
        except (sf.SoundFileError, OSError):
            return None


def known_transcripts() -> dict[str, str]:
    """Transcripts of the published model repository's voice prompts, by name (package data, with its source)."""
    data = json.loads(resources.files("csm_cli").joinpath("data/csm-1b-prompts.json").read_text())
    return {name: prompt["text"] for name, prompt in data["prompts"].items()}


def model_voices(files: Iterable[Path]) -> dict[str, Voice]:
    """A model repository's voices (its prompts/NAME.wav), by name, with the transcripts that are known."""
    transcripts = known_transcripts()
    return {file.stem: Voice(file.stem, file, transcripts.get(file.stem)) for file in sorted(files)}


def unknown_voice(name: str, voices: dict[str, Voice]) -> CsmError:
    offered = ", ".join(voices) if voices else "none: the model has no prompts/*.wav"
    return CsmError(f"unknown voice {name!r}: the model's voices are {offered} (see `csm voices`); "
                    "or give an audio file with --voice-text")


def choose_voices(voices: dict[str, Voice], voice: str | None, voice_text: str | None, speaker: int,
                  has_context: bool) -> list[tuple[int, Voice]]:
    """Which speaker speaks with which voice, checked before the model loads:
    - `voice` a name of `voices` (its transcript, or `voice_text`) or an audio file with `voice_text`: for `speaker`;
    - `voice` "none": no voice;
    - no `voice` and no other context: the model's default voices (`DEFAULT_VOICES`) that it has."""
    if voice is None:
        if voice_text is not None:
            raise CsmError("--voice-text needs --voice: the name of a voice or an audio file")
        if has_context:
            return []
        return [(n, voices[name]) for n, name in DEFAULT_VOICES.items() if name in voices and voices[name].text]
    if voice == NO_VOICE:
        if voice_text is not None:
            raise CsmError("--voice none takes no --voice-text")
        return []
    if voice in voices:
        chosen = voices[voice]
        text = voice_text or chosen.text
        if not text:
            raise CsmError(f"no transcript is known for voice {voice}: give what is said in it with --voice-text")
        return [(speaker, Voice(chosen.name, chosen.path, text))]
    path = Path(voice).expanduser()
    if not path.exists() and not path.suffix and "/" not in voice:  # a name, not a file
        raise unknown_voice(voice, voices)
    load_voice_prompt(path)  # fails now, naming the file, if it cannot be used
    if not voice_text or not voice_text.strip():
        raise CsmError(f"--voice {voice} needs --voice-text: what is said in the recording")
    return [(speaker, Voice(path.stem, path, voice_text.strip()))]


def cached_voice_codes(voice: Voice, codec_fingerprint: str, encode: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The codec's codes [C, T] of a voice's recording: encoded once, then read from the cache (`VOICE_CODES`), keyed
    by the hashes of the recording and of the codec."""
    key = f"{hashlib.sha256(voice.path.read_bytes()).hexdigest()[:32]}-{codec_fingerprint}"
    codes = VOICE_CODES.read(key, np.load, damaged=(OSError, ValueError, EOFError))
    if codes is None:
        codes = encode(load_voice_prompt(voice.path))
        VOICE_CODES.write(key, lambda path: np.save(path, codes))  # the path ends in .npy: np.save adds nothing
    return codes


def voice_segment(voice: Voice, speaker: int, codec: Codec) -> Segment:
    """A voice (the model's, or any recording with its text) as a context segment for `speaker`, its codes encoded
    by `codec` once and cached on disk."""
    assert voice.text, "a voice prompt needs its transcript"
    codes = cached_voice_codes(voice, codec.fingerprint, lambda samples: codec.encode(samples).cpu().numpy())
    return Segment(speaker, voice.text, codes=codes)


def named_voice(voices: dict[str, Voice], name: str, speaker: int, codec: Codec) -> Segment:
    """The voice `name` of `voices` (a model's: name -> Voice with its transcript, or None) as a context segment for
    `speaker` (put it first in a stream's context: the reference's demo gives speaker 0 "conversational_a" and
    speaker 1 "conversational_b"). An unknown name or a voice without a known transcript raises CsmError."""
    if name not in voices:
        raise unknown_voice(name, voices)
    voice = voices[name]
    if not voice.text:
        raise CsmError(f"no transcript is known for voice {name}: use voice_segment() with its text")
    return voice_segment(voice, speaker, codec)
