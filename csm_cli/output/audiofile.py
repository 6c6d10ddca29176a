"""Audio files written chunk by chunk through libsndfile (soundfile), in the format their extension names.

A WAV file's header is rewritten after every chunk (libsndfile's SFC_SET_UPDATE_HEADER_AUTO), so the file on disk
is valid and says its length at every moment, however the process ends; FLAC and OGG get their final header when
closed (on Ctrl-C, SIGTERM, SIGHUP and errors too). When the disk fills up, libsndfile's close writes
a WAV header that counts the bytes that reached the disk, OGG, Opus and MP3 play up to where the disk filled, and a
FLAC is cut to its last whole frame (libsndfile leaves it of unknown length, which it cannot read back). Outputs that
cannot be seeked (pipes, FIFOs, terminals) are refused: raw PCM on stdout (`--out -`) is the streaming output.
"""

import re
import stat
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile as sf

from ..audio import SAMPLE_RATE
from ..errors import CsmError

SampleFormat = Literal["s16", "f32"]
_SFC_SET_UPDATE_HEADER_AUTO = 0x1061  # sndfile.h: rewrite the header after every write; soundfile has no name for it

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
                if self.format == "WAV":
                    sf._snd.sf_command(self._file._file, _SFC_SET_UPDATE_HEADER_AUTO, sf._ffi.NULL, 1)
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
        if after_error and self.format == "FLAC":
            cut_flac_to_whole_frames(self.path)


_FLAC_SYNC = b"\xff\xf8"  # a frame of a fixed-blocksize stream, as libsndfile writes them
_FLAC_TAIL_BYTES = 1 << 16  # more than one frame of 4096 mono samples


def cut_flac_to_whole_frames(path: Path) -> None:
    """A FLAC whose writing stopped mid-frame (a full disk) made readable in place: cut before its last frame, its
    length written into STREAMINFO (libsndfile left it unknown). Nothing grows, so this works on a full disk."""
    with path.open("r+b") as file:
        head = file.read(4 + 4 + 34)  # "fLaC", STREAMINFO's block header and STREAMINFO
        signature = _first_frame_signature(file)
        size = file.seek(0, 2)
        start = max(len(head), size - _FLAC_TAIL_BYTES)
        file.seek(start)
        tail = file.read()
        for at in range(len(tail) - len(_FLAC_SYNC), -1, -1):
            number = _frame_number(tail, at, signature)
            if number is not None:
                break
        else:
            return
        total = number * int.from_bytes(head[8:10], "big")  # frames before it, of the fixed block size
        file.truncate(start + at)
        file.seek(21)  # STREAMINFO's 36-bit total of samples: the low 4 bits of this byte and the next 4 bytes
        file.write(bytes([head[21] & 0xF0 | total >> 32]) + (total & 0xFFFFFFFF).to_bytes(4, "big"))


def _first_frame_signature(file: BinaryIO) -> bytes:
    """Sync code and the block size, sample rate, channels and sample size bytes of the first frame's header, which
    every frame of the stream repeats."""
    offset = 4
    while True:
        file.seek(offset)
        block = file.read(4)
        offset += 4 + int.from_bytes(block[1:4], "big")
        if len(block) < 4 or block[0] & 0x80:  # the last metadata block
            file.seek(offset)
            return file.read(4)


def _frame_number(data: bytes, at: int, signature: bytes) -> int | None:
    """The number of the frame whose header starts at `at`, if one with `signature` and a valid CRC-8 does."""
    if data[at:at + 4] != signature or at + 16 > len(data):
        return None
    lead = data[at + 4]  # the frame number, coded as UTF-8 codes a character
    extra = 0 if lead < 0x80 else 7 - (lead ^ 0xFF).bit_length()
    number = lead & ((1 << (6 - extra)) - 1) if extra else lead
    for byte in data[at + 5:at + 5 + extra]:
        number = number << 6 | byte & 0x3F
    end = at + 5 + extra
    end += {6: 1, 7: 2}.get(data[at + 2] >> 4, 0) + {12: 1, 13: 2, 14: 2}.get(data[at + 2] & 0x0F, 0)
    return number if _crc8(data[at:end]) == data[end] else None


def _crc8(data: bytes) -> int:
    """FLAC's frame header CRC: polynomial x^8 + x^2 + x + 1."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc << 1 ^ 0x07 if crc & 0x80 else crc << 1) & 0xFF
    return crc


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
