"""The ring between the generator and the sound card: order, wrap-around, back-pressure, end of stream."""

import threading
import time

import numpy as np
import pytest

from csm_cli.audio import SAMPLES_PER_FRAME
from csm_cli.output.ring import RingBuffer

BLOCKED_S = 0.1  # how long a writer that should stay blocked is watched


def _numbered(start: int, count: int) -> np.ndarray:
    """Samples whose values are their positions in the stream (exact in float32 below 2**24)."""
    return np.arange(start, start + count, dtype=np.float32)


def _writer_thread(
    ring: RingBuffer, chunk: np.ndarray, stop: threading.Event | None = None
) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(ring.write(chunk, stop)), daemon=True)
    thread.start()
    return thread, result


def test_two_threads_pass_every_sample_in_order_across_wrap_arounds():
    ring = RingBuffer(capacity_frames=2)
    rng = np.random.default_rng(0)
    chunk_sizes = rng.integers(1, 3 * ring.capacity, size=150)  # odd sizes, some larger than the ring
    total = int(chunk_sizes.sum())

    def produce() -> None:
        position = 0
        for size in chunk_sizes:
            assert ring.write(_numbered(position, int(size)))
            position += int(size)
        ring.close()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    received = np.full(total, -1.0, dtype=np.float32)
    position = 0
    out = np.empty(5000, dtype=np.float32)
    while not ring.drained:
        count = ring.read_into(out[: int(rng.integers(1, len(out)))])
        received[position : position + count] = out[:count]
        position += count
        if rng.random() < 0.05:
            time.sleep(0.001)  # let the producer fill the ring up, so that reads also find it full
    producer.join()
    assert position == total
    np.testing.assert_array_equal(received, _numbered(0, total))


def test_read_copies_what_is_there_and_never_waits():
    ring = RingBuffer(capacity_frames=1)
    out = np.full(10, 7.0, dtype=np.float32)
    assert ring.read_into(out) == 0
    np.testing.assert_array_equal(out, 7.0)
    ring.write(_numbered(0, 4))
    assert ring.read_into(out) == 4
    np.testing.assert_array_equal(out[:4], _numbered(0, 4))
    np.testing.assert_array_equal(out[4:], 7.0)
    assert ring.fill == 0


def test_full_ring_blocks_the_writer_until_the_reader_makes_room():
    ring = RingBuffer(capacity_frames=1)
    assert ring.capacity == SAMPLES_PER_FRAME
    assert ring.write(_numbered(0, SAMPLES_PER_FRAME))
    assert ring.try_write(_numbered(0, 1)) == 0
    thread, result = _writer_thread(ring, _numbered(SAMPLES_PER_FRAME, 100))
    thread.join(BLOCKED_S)
    assert thread.is_alive(), "a write into a full ring returned"
    out = np.empty(150, dtype=np.float32)
    assert ring.read_into(out) == 150
    thread.join(1.0)
    assert result == [True]
    remaining = SAMPLES_PER_FRAME - 150 + 100
    assert ring.fill == remaining
    rest = np.empty(ring.capacity, dtype=np.float32)
    assert ring.read_into(rest) == remaining
    np.testing.assert_array_equal(rest[:remaining], _numbered(150, remaining))


def test_stop_releases_a_blocked_writer():
    ring = RingBuffer(capacity_frames=1)
    ring.write(_numbered(0, SAMPLES_PER_FRAME))
    stop = threading.Event()
    thread, result = _writer_thread(ring, _numbered(0, 10), stop)
    thread.join(BLOCKED_S)
    assert thread.is_alive()
    stopped_at = time.monotonic()
    stop.set()
    thread.join(1.0)
    assert result == [False]
    assert time.monotonic() - stopped_at < 0.1


def test_close_marks_the_end_and_drained_follows_the_last_read():
    ring = RingBuffer(capacity_frames=1)
    ring.write(_numbered(0, 100))
    ring.close()
    assert ring.closed and not ring.drained
    out = np.empty(60, dtype=np.float32)
    assert ring.read_into(out) == 60
    assert not ring.drained
    assert ring.read_into(out) == 40
    assert ring.drained
    with pytest.raises(AssertionError):
        ring.write(_numbered(0, 1))
