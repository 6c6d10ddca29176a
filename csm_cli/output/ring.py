"""A bounded single-producer/single-consumer ring of float32 samples between the generator and the sound card.

The producer owns the write counter and the consumer the read counter; both only grow, so ``written - read``
is the fill and ``counter % capacity`` the position, whatever the wrap-around. The consumer side (the audio
callback) never waits: it copies what is there and, if it can take the lock without waiting, wakes a producer
blocked on a full ring. A wake it misses costs the producer at most one poll interval.
"""

import threading

import numpy as np

from ..audio import SAMPLE_RATE, SAMPLES_PER_FRAME

_SPACE_POLL_S = 0.01  # longest a blocked producer sleeps before it looks at the ring and its stop event again


class RingBuffer:
    """Float32 samples in a buffer allocated once, with room for a whole number of frames."""

    def __init__(self, capacity_frames: int) -> None:
        assert capacity_frames > 0, capacity_frames
        self._samples = np.zeros(capacity_frames * SAMPLES_PER_FRAME, dtype=np.float32)
        self._written = 0  # samples ever written: changed by the producer only
        self._read = 0  # samples ever read: changed by the consumer only
        self._closed = False
        self._space = threading.Condition()

    @property
    def capacity(self) -> int:
        """Samples the ring holds when full."""
        return len(self._samples)

    @property
    def fill(self) -> int:
        """Samples written and not yet read."""
        return self._written - self._read

    @property
    def fill_seconds(self) -> float:
        return self.fill / SAMPLE_RATE

    @property
    def closed(self) -> bool:
        """The producer has written its last sample."""
        return self._closed

    @property
    def drained(self) -> bool:
        """Closed and every sample read."""
        return self._closed and self.fill == 0

    # Producer side.

    def try_write(self, samples: np.ndarray) -> int:
        """Copies as many leading samples as fit now, without waiting; returns how many."""
        assert not self._closed, "write after close"
        count = min(len(samples), self.capacity - self.fill)
        start = self._written % self.capacity
        first = min(count, self.capacity - start)
        self._samples[start : start + first] = samples[:first]
        self._samples[: count - first] = samples[first:count]
        self._written += count
        return count

    def write(self, chunk: np.ndarray, stop: threading.Event | None = None) -> bool:
        """Copies the whole chunk, waiting while the ring is full (back-pressure). Returns False, with part of the
        chunk possibly written, if ``stop`` was set while waiting."""
        done = self.try_write(chunk)
        while done < len(chunk):
            if stop is not None and stop.is_set():
                return False
            with self._space:
                if self.fill == self.capacity:
                    self._space.wait(_SPACE_POLL_S)
            done += self.try_write(chunk[done:])
        return True

    def close(self) -> None:
        """Marks the end of the stream: the consumer reads what is left, and nothing more comes."""
        self._closed = True

    # Consumer side.

    def read_into(self, out: np.ndarray) -> int:
        """Copies up to ``len(out)`` samples into the front of ``out``; returns how many. Never waits."""
        count = min(len(out), self.fill)
        start = self._read % self.capacity
        first = min(count, self.capacity - start)
        out[:first] = self._samples[start : start + first]
        out[first:count] = self._samples[: count - first]
        self._read += count
        if count and self._space.acquire(blocking=False):
            try:
                self._space.notify()
            finally:
                self._space.release()
        return count
