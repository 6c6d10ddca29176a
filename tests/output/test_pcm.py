import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from csm_cli.audio import SAMPLES_PER_FRAME
from csm_cli.output.pcm import SIGPIPE_EXIT_STATUS, OutputClosed, RawPcmWriter

REPO = Path(__file__).resolve().parents[2]
SAMPLES = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32)


def test_s16_is_clipped_16_bit_little_endian() -> None:
    stream = io.BytesIO()
    RawPcmWriter(stream, "s16").write(SAMPLES)
    data = stream.getvalue()
    assert len(data) == 2 * len(SAMPLES)
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_f32_is_unclipped_32_bit_little_endian_float() -> None:
    stream = io.BytesIO()
    writer = RawPcmWriter(stream, "f32")
    writer.write(SAMPLES)
    writer.write(SAMPLES[:2])
    data = stream.getvalue()
    assert len(data) == 4 * (len(SAMPLES) + 2)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4"), np.concatenate([SAMPLES, SAMPLES[:2]]))


def test_each_chunk_reaches_the_reader_when_written() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    with os.fdopen(write_fd, "wb") as pipe:  # buffered: 8 KiB would stay in the buffer without a flush
        RawPcmWriter(pipe, "s16").write(np.zeros(SAMPLES_PER_FRAME, dtype=np.float32))
        assert len(os.read(read_fd, 1 << 16)) == 2 * SAMPLES_PER_FRAME
    os.close(read_fd)


def test_closed_reader_raises_output_closed() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "wb", buffering=0) as pipe, pytest.raises(OutputClosed):
        RawPcmWriter(pipe).write(SAMPLES)


_ENDLESS_WRITER = """
import numpy as np
from csm_cli.output.pcm import OutputClosed, RawPcmWriter, exit_for_closed_output

writer = RawPcmWriter()
try:
    while True:
        writer.write(np.zeros(1920, dtype=np.float32))
except OutputClosed:
    exit_for_closed_output()
"""


def test_closed_pipe_ends_the_program_quietly_with_sigpipe_status() -> None:
    # Buffered stdout, as for most users: the chunk whose flush failed is still buffered at exit.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    writer = subprocess.Popen(
        [sys.executable, "-c", _ENDLESS_WRITER],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None
    assert writer.stderr is not None
    head = subprocess.run(["head", "-c", "1000"], stdin=writer.stdout, capture_output=True, timeout=30, check=True)
    writer.stdout.close()
    writer.wait(timeout=30)
    assert head.stdout == bytes(1000)
    assert writer.stderr.read() == b""
    assert writer.returncode == SIGPIPE_EXIT_STATUS == 141
