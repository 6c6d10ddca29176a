"""Audio files written chunk by chunk: formats by extension, valid while they grow, full disks, unseekable paths."""

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_readers import assert_readable

from csm_cli.audio import SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_cli.errors import CsmError
from csm_cli.output.audiofile import (
    AudioFileWriter,
    check_output_file,
    numbered_path,
    prepare_out_dir,
    supported_extensions,
)

CHUNK = (0.2 * np.sin(np.arange(SAMPLES_PER_FRAME) / 7)).astype(np.float32)


@pytest.mark.parametrize(("sample_format", "width", "header"), [("s16", 2, 44), ("f32", 4, 80)])
def test_a_wav_file_says_its_length_after_every_chunk_and_is_created_with_the_first(tmp_path, sample_format, width,
                                                                                    header):
    """Its header rewritten with each chunk, as a reader that trusts it (Python's wave, ffmpeg) needs: a process
    that dies between two chunks leaves a file that says what it holds."""
    path = tmp_path / "out.wav"
    writer = AudioFileWriter(path, sample_format)
    assert not path.exists()
    chunks = [np.full(SAMPLES_PER_FRAME, 0.25, dtype=np.float32),
              np.linspace(-1, 1, SAMPLES_PER_FRAME, dtype=np.float32)]
    for count, chunk in enumerate(chunks, start=1):
        writer.write(chunk)
        assert assert_readable(path) == SAMPLES_PER_FRAME * count  # read while the writer still holds the file open
        samples, _ = sf.read(str(path), dtype="float32")
        np.testing.assert_allclose(samples[-SAMPLES_PER_FRAME:], chunk, atol=2 / 32767)
    writer.close()
    assert path.stat().st_size == header + width * 2 * SAMPLES_PER_FRAME
    writer.write(CHUNK)  # a producer finishing after the run ended: dropped
    assert assert_readable(path) == 2 * SAMPLES_PER_FRAME


@pytest.mark.parametrize(("name", "sample_format", "container", "subtype"), [
    ("a.wav", "s16", "WAV", "PCM_16"),
    ("a.WAV", "f32", "WAV", "FLOAT"),
    ("a.flac", "s16", "FLAC", "PCM_16"),
    ("a.ogg", "s16", "OGG", "VORBIS"),
    ("a.opus", "s16", "OGG", "OPUS"),
    ("a.mp3", "s16", "MP3", "MPEG_LAYER_III"),
])
def test_the_extension_chooses_the_format(tmp_path, name, sample_format, container, subtype):
    path = tmp_path / name
    writer = AudioFileWriter(path, sample_format)
    for _ in range(10):
        writer.write(CHUNK)
    writer.close()
    info = sf.info(str(path))
    assert (info.format, info.subtype, info.samplerate, info.channels) == (container, subtype, SAMPLE_RATE, 1)
    assert info.frames == 10 * SAMPLES_PER_FRAME


def test_the_supported_extensions_are_those_libsndfile_writes_here():
    assert supported_extensions() == [".wav", ".flac", ".ogg", ".opus", ".mp3"]  # libsndfile 1.2.2 here


@pytest.mark.parametrize(("name", "sample_format", "message"), [
    ("speech.aiff", "s16", "the extension .aiff is not a supported format; use one of .wav, .flac, .ogg, .opus, .mp3 "
                           "(or --out - for raw PCM)"),
    ("speech", "s16", "the extension (none) is not a supported format"),
    ("speech.flac", "f32", "--format f32 is for .wav files and --out -: .flac holds 16-bit samples"),
])
def test_unsupported_formats_are_refused_with_the_supported_ones(tmp_path, name, sample_format, message):
    with pytest.raises(CsmError, match=re.escape(message)):
        check_output_file(tmp_path / name, sample_format)


def test_pipes_and_devices_are_refused(tmp_path):
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    with pytest.raises(CsmError, match=r"is not a regular file .*use --out - for raw PCM"):
        check_output_file(fifo, "s16")
    with pytest.raises(CsmError, match="is not a regular file"):
        check_output_file(Path("/dev/full"), "s16")
    (tmp_path / "dir.wav").mkdir()
    with pytest.raises(CsmError, match="it is a directory"):
        check_output_file(tmp_path / "dir.wav", "s16")


@pytest.fixture
def small_disk(tmp_path):
    """A 200 kB tmpfs: the disk fills up after about 4 s of 16-bit audio."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_an_error_and_the_header_matches_the_data_on_disk(small_disk):
    path = small_disk / "out.wav"
    writer = AudioFileWriter(path)
    with pytest.raises(CsmError, match=r"writing .*out\.wav failed \(.*is the disk full\?\): it holds the audio"):
        for _ in range(1000):
            writer.write(CHUNK)
    writer.close()
    info = sf.info(str(path))
    assert info.frames > SAMPLE_RATE  # the audio before the disk filled up is there
    assert path.stat().st_size == 44 + 2 * info.frames
    assert len(sf.read(str(path))[0]) == info.frames


@pytest.mark.parametrize("extension", [".flac", ".ogg", ".opus", ".mp3"])
def test_a_full_disk_ends_a_compressed_file_with_an_error_and_what_reached_the_disk_plays(small_disk, extension):
    if extension not in supported_extensions():
        pytest.skip(f"this libsndfile does not write {extension}")
    path = small_disk / f"out{extension}"
    writer = AudioFileWriter(path)
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, (2000, SAMPLES_PER_FRAME)).astype(np.float32)  # compresses
    with pytest.raises(CsmError, match=rf"writing .*out\{extension} failed \(.*is the disk full\?\)"):
        for chunk in noise:  # more than the disk holds, compressed
            writer.write(chunk)
    writer.close()
    samples, rate = sf.read(str(path), dtype="float32")
    assert rate == SAMPLE_RATE and len(samples) > SAMPLE_RATE
    if extension == ".flac":  # lossless: what was written, up to the last whole frame
        assert len(samples) <= writer.samples_written
        np.testing.assert_allclose(samples, noise.ravel()[:len(samples)], atol=1 / 32767)


def test_numbered_path_sorts_in_speaking_order() -> None:
    assert numbered_path(Path("out"), 3, 2) == Path("out/0003-2.wav")
    assert numbered_path(Path("out"), 12345, 1) == Path("out/12345-1.wav")


def test_prepare_out_dir_creates_missing_directories(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b"
    assert prepare_out_dir(directory) == directory
    assert directory.is_dir()
    assert prepare_out_dir(directory) == directory
    assert list(directory.iterdir()) == []


def test_prepare_out_dir_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "taken.wav"
    path.write_bytes(b"")
    with pytest.raises(CsmError, match="is a file"):
        prepare_out_dir(path)
    with pytest.raises(CsmError, match="cannot write files"):
        prepare_out_dir(path / "below")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, where nobody can create files")
def test_prepare_out_dir_refuses_a_directory_without_write_access() -> None:
    with pytest.raises(CsmError, match="cannot write files in --out-dir /proc"):
        prepare_out_dir(Path("/proc"))
