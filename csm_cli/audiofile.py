"""Audio files written chunk by chunk through libsndfile (soundfile), in the format their extension names.

A WAV file's header is rewritten after every chunk, so the file is valid on disk while it grows; FLAC and OGG
get their final header when closed (on Ctrl-C and errors too). When the disk fills up, libsndfile's close writes
a WAV header that counts the bytes that reached the disk, and OGG, Opus and MP3 play up to where the disk filled;
a FLAC is left with its length unknown and its last frame cut, which libsndfile cannot read back. Outputs that
cannot be seeked (pipes, FIFOs, terminals) are refused: raw PCM on stdout (`--out -`) is the streaming output.
"""

import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

from .audio import SAMPLE_RATE
from .errors import CsmError

SampleFormat = Literal["s16", "f32"]

# extension -> libsndfile's container and the subtype of each sample format it can hold
_FORMATS: dict[str, tuple[str, dict[SampleFormat, str]]] = {
    ".wav": ("WAV", {"s16": "PCM_16", "f32": "FLOAT"}),
    ".flac": ("FLAC", {"s16": "PCM_16"}),
    ".ogg": ("OGG", {"s16": "VORBIS"}),
    ".opus": ("OGG", {"s16": "OPUS"}),
    ".mp3": ("MP3", {"s16": "MPEG_LAYER_III"}),
}


def supported_extensions() -> list[str]:
    """The extensions whose format the installed libsndfile writes."""
    return [ext for ext, (container, subtypes) in _FORMATS.items()
            if container in sf.available_formats() and subtypes["s16"] in sf.available_subtypes(container)]


def file_format(path: Path, sample_format: SampleFormat) -> tuple[str, str]:
    """libsndfile's (format, subtype) for `path`'s extension, or a CsmError listing what is supported."""
    extension = path.suffix.lower()
    supported = supported_extensions()
    if extension not in supported:
        raise CsmError(f"cannot write {path}: the extension {extension or '(none)'} is not a supported format; "
                       f"use one of {', '.join(supported)} (or --out - for raw PCM)")
    container, subtypes = _FORMATS[extension]
    if sample_format not in subtypes:
        raise CsmError(f"--format {sample_format} is for .wav files and --out -: {extension} holds "
                       f"{'16-bit samples' if container == 'FLAC' else 'compressed audio'}")
    return container, subtypes[sample_format]


def check_output_file(path: Path, sample_format: SampleFormat) -> None:
    """Fails before the model loads if `path` cannot be written as an audio file of its extension."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise CsmError(f"cannot write {path}: {e.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise CsmError(f"cannot write {path}: it is a directory")
    if mode is not None and not stat.S_ISREG(mode):
        raise CsmError(f"cannot write {path}: it is not a regular file (a pipe or a device), and an audio file's "
                       "header is rewritten as it grows; use --out - for raw PCM on stdout")
    file_format(path, sample_format)


class AudioFileWriter:
    """Appends float32 chunks to a mono audio file, flushed after each one. The file is created with the first
    chunk: a run that fails before any audio leaves none. Safe to call from two threads: a chunk written after
    close() (by a producer still finishing while the run ends) is dropped."""

    def __init__(self, path: Path | str, sample_format: SampleFormat = "s16", sample_rate: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.format, self.subtype = file_format(self.path, sample_format)
        self.samples_written = 0
        self._file: sf.SoundFile | None = None
        self._closed = False
        self._lock = threading.Lock()

    def write(self, samples: np.ndarray) -> None:
        with self._lock:
            if self._closed:
                return
            if self._file is None:
                try:
                    self._file = sf.SoundFile(self.path, "w", self.sample_rate, 1, self.subtype, format=self.format)
                except (sf.SoundFileError, OSError) as e:
                    self._closed = True
                    raise CsmError(f"cannot write {self.path}: {_reason(e)}") from None
            try:
                self._file.write(samples)
                self._file.flush()
            except sf.SoundFileError as e:
                self._close(after_error=True)
                raise CsmError(f"writing {self.path} failed ({_reason(e)}; is the disk full?): it holds the audio "
                               "that reached the disk") from None
            self.samples_written += len(samples)

    def close(self) -> None:
        with self._lock:
            self._close(after_error=False)

    def _close(self, after_error: bool) -> None:
        self._closed = True
        file, self._file = self._file, None
        if file is None:
            return
        try:
            file.close()  # FLAC and OGG write their final header here
        except sf.SoundFileError as e:
            if not after_error:  # after a failed write, that one is reported and libsndfile wrote what it could
                raise CsmError(f"closing {self.path} failed ({_reason(e)}; is the disk full?)") from None


def _reason(error: Exception) -> str:
    if isinstance(error, sf.LibsndfileError):
        return error.error_string.rstrip(".")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


_NUMBERED = re.compile(r"[0-9]{4,}-[0-9]+\.[a-z0-9]+")


def numbered_path(directory: Path, line: int, part: int, extension: str = ".wav") -> Path:
    """The file of the `part`-th utterance of input line `line` (both from 1), named so that names sort in speaking
    order: 0003-2.wav."""
    assert line >= 1 and part >= 1, (line, part)
    return directory / f"{line:04d}-{part}{extension}"


def prepare_out_dir(directory: Path) -> Path:
    """Creates the output directory if missing and checks that files can be created in it and that it holds no
    numbered files of an earlier run, which would mix with this run's."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        earlier = sorted(path.name for path in directory.iterdir() if _NUMBERED.fullmatch(path.name))
    except FileExistsError:
        raise CsmError(f"--out-dir {directory} is a file: choose a directory path") from None
    except OSError as e:
        raise CsmError(
            f"cannot write files in --out-dir {directory} ({e.strerror}): choose a writable directory"
        ) from None
    if earlier:
        raise CsmError(f"--out-dir {directory} already holds {len(earlier)} numbered files of an earlier run "
                       f"({earlier[0]} ...): choose another directory or remove them, so that runs do not mix")
    return directory
