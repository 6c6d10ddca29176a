"""Whether an audio file is valid for the readers people use: Python's `wave` (16-bit PCM WAV), libsndfile (soundfile)
and ffmpeg (the system package, as `make install` installs it). Each must open it and find the same samples; a WAV's
header must say exactly the size the file has, as a player that trusts it needs."""

import struct
import subprocess
import wave
from pathlib import Path

import soundfile as sf

from csm_cli.audio import SAMPLE_RATE


def ffmpeg_samples(path: Path) -> int:
    """The samples ffmpeg decodes from `path`, as 24 kHz mono; it must report no error on the way."""
    done = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1",
                           "-ar", str(SAMPLE_RATE), "-"], capture_output=True, timeout=60)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode(errors="replace")
    return len(done.stdout) // 2


def wav_chunk_sizes(path: Path) -> dict[bytes, int]:
    """The RIFF size and each chunk's size, as a WAV's header says them."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:12]
    sizes = {b"RIFF": struct.unpack("<I", data[4:8])[0]}
    at = 12
    while at + 8 <= len(data):
        name, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        sizes[name] = size
        if name == b"data":
            break
        at += 8 + size + size % 2
    return sizes


def assert_readable(path: Path) -> int:
    """Asserts that every reader reads `path` whole; returns its samples."""
    info = sf.info(str(path))
    assert info.samplerate == SAMPLE_RATE and info.channels == 1, info
    samples, _ = sf.read(str(path), dtype="float32")
    assert len(samples) == info.frames
    if info.format == "WAV":
        width = 2 if info.subtype == "PCM_16" else 4
        sizes = wav_chunk_sizes(path)
        assert sizes[b"RIFF"] == path.stat().st_size - 8, (sizes, path.stat().st_size)
        assert sizes[b"data"] == width * info.frames, (sizes, info.frames)
        if info.subtype == "PCM_16":
            with wave.open(str(path)) as reader:
                assert reader.getnframes() == info.frames
                assert len(reader.readframes(info.frames)) == width * info.frames
    decoded = ffmpeg_samples(path)
    if info.format in ("WAV", "FLAC"):  # the compressed formats carry an encoder's delay and padding
        assert decoded == info.frames, (decoded, info.frames)
    else:
        assert decoded > 0
    return info.frames


def assert_readable_while_growing(path: Path, reads: int = 10) -> int:
    """`assert_readable` on a file another process is appending to: the readers open it one after another, so a read
    that failed while the file changed under it is made again; one that failed on a file that stayed the same fails."""
    for _ in range(reads - 1):
        before = path.stat()
        try:
            return assert_readable(path)
        except AssertionError:
            after = path.stat()
            if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):
                raise
    return assert_readable(path)
