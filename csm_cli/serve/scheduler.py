"""The one thread that owns the model: every open stream's utterances generated together, in one batch.

A stream is one client's slot: utterances queued on it are spoken one after another, each chunk handed to the
stream's `emit` callback from the model thread. The utterances being spoken take slots of one `SpeechBatch` of
`max_streams` slots, so each step of the model samples a frame for every stream (continuous batching: a stream
joins between two steps, its prompt prefilled in its slot, and leaves as soon as its utterance ends or it is
closed). Each round, the streams with an utterance to start join the batch first, so that those arriving together
take part in the same step. Then the thread takes the streams in turn; each takes the chunks its frames already
queued make, and at most one step of the batch more, so that no stream falls behind the others, and a stream whose
prompt is being prefilled takes a step that prefills the next part of it. Closing a stream, from any thread, stops its
generation before its next chunk and frees its slot.
"""

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CsmError
from ..generation.generator import StreamingGenerator

# starts one utterance on the model thread (in the scheduler's batch) and yields its chunks
Start = Callable[[], Iterator[np.ndarray]]


class ServerBusy(CsmError):
    """Every slot is taken."""


@dataclass(frozen=True)
class Chunk:
    tag: Any
    samples: np.ndarray  # float32, 24 kHz mono


@dataclass(frozen=True)
class Done:
    tag: Any


@dataclass(frozen=True)
class Failed:
    tag: Any
    message: str
    internal: bool  # a fault of the server, not of the request


Event = Chunk | Done | Failed


class Stream:
    """One client's slot. `submit` and `close` may be called from any thread; `emit` is called on the model thread."""

    def __init__(self, scheduler: "Scheduler", emit: Callable[[Event], None]) -> None:
        self._scheduler = scheduler
        self._emit = emit
        self._jobs: deque[tuple[Any, Start]] = deque()
        self._current: tuple[Any, Iterator[np.ndarray]] | None = None
        self.closed = False

    def submit(self, tag: Any, start: Start) -> None:
        """Queues an utterance; its chunks are emitted as Chunk(tag, ...), then Done(tag) or Failed(tag, ...)."""
        with self._scheduler.lock:
            self._jobs.append((tag, start))
            self._scheduler.lock.notify()

    def close(self) -> None:
        with self._scheduler.lock:
            self.closed = True
            self._scheduler.lock.notify()

    def _has_work(self) -> bool:
        return self.closed or self._current is not None or bool(self._jobs)

    def _take_turn(self) -> None:
        """The chunks of frames already generated, and one step of the batch more if this stream needs one."""
        batch = self._scheduler.batch
        steps = batch.steps
        while batch.steps == steps and self._step():
            pass

    def _step(self) -> bool:
        """One chunk of the current utterance, starting the next queued one if none is current; False when there
        was nothing to do. Model thread only."""
        if self._current is None:
            with self._scheduler.lock:
                if not self._jobs:
                    return False
                tag, start = self._jobs.popleft()
            try:
                self._current = (tag, start())
            except Exception as e:  # reported to the client; the server goes on
                self._fail(tag, e)
                return True
        tag, chunks = self._current
        try:
            samples = next(chunks, None)
        except Exception as e:  # reported to the client; the server goes on
            self._current = None
            self._fail(tag, e)
            return True
        if samples is None:
            self._current = None
            self._emit(Done(tag))
        elif len(samples):  # empty while its prompt is being prefilled
            self._emit(Chunk(tag, samples))
        return True

    def _fail(self, tag: Any, error: Exception) -> None:
        if isinstance(error, CsmError):
            self._emit(Failed(tag, str(error), internal=False))
        else:
            traceback.print_exception(error, file=sys.stderr)
            self._emit(Failed(tag, f"generation failed ({type(error).__name__}); the server goes on", internal=True))

    def _release(self) -> None:
        if self._current is not None:
            self._current[1].close()  # type: ignore[attr-defined]
            self._current = None


class Scheduler:
    def __init__(self, generator: StreamingGenerator, max_streams: int) -> None:
        assert max_streams >= 1, max_streams
        self.generator = generator
        self.max_streams = max_streams
        self.batch = generator.new_batch(max_streams)
        self.lock = threading.Condition()
        self._streams: list[Stream] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="csm-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        self._thread.join()

    @property
    def open_streams(self) -> int:
        """Streams not closed. A closed one is free at once: the model thread removes it, and frees its slot of the
        batch, before any stream opened after it starts an utterance."""
        with self.lock:
            return sum(not stream.closed for stream in self._streams)

    def open(self, emit: Callable[[Event], None]) -> Stream:
        """A new slot, or ServerBusy at once when all `max_streams` are taken."""
        with self.lock:
            if sum(not stream.closed for stream in self._streams) >= self.max_streams:
                raise ServerBusy(f"all {self.max_streams} streams are busy (--max-streams): try again shortly")
            stream = Stream(self, emit)
            self._streams.append(stream)
            return stream

    def _run(self) -> None:
        while True:
            with self.lock:
                while not self._stopping and not any(stream._has_work() for stream in self._streams):
                    self.lock.wait()
                if self._stopping:
                    return
                turn = [stream for stream in self._streams if stream._has_work()]
            for stream in turn:
                if stream.closed:
                    self._remove(stream)
                elif stream._current is None:
                    stream._step()  # starts its next utterance: it joins the batch before the next step
            for stream in turn:
                if not stream.closed:
                    stream._take_turn()

    def _remove(self, stream: Stream) -> None:
        stream._release()
        with self.lock:
            self._streams.remove(stream)
