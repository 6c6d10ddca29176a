"""The server's streams over the generator's model thread: each client's utterances, spoken one after another.

A stream is one client's place on the server (at most `max_streams` are open). Utterances submitted to it are
spoken in order by a thread of the stream's own, which reads their chunks as the model thread generates them (every
open stream's utterance in one step of the frame engine: `generation.scheduler`) and hands each to the stream's
`emit` callback. Closing a stream, from any thread, frees its place at once and closes what it is speaking, whose
generation stops before its next frame; `cancel(tags)` drops utterances, queued or being spoken, and the stream goes
on with the next.

The utterance being spoken is whatever `start()` returns; to be stopped at once by `close` or `cancel` its speeches
must be started with the stream as their owner (`Conversation(..., owner=stream)`): one started just as the stream is
closed or its utterance cancelled ends at once (`stopped`), so that it holds no slot of the engine.
"""

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CsmError
from ..generation.generator import StreamingGenerator

# starts one utterance (on the stream's thread) and yields its chunks
Start = Callable[[], Iterator[np.ndarray]]


class ServerBusy(CsmError):
    """Every stream is taken."""


@dataclass(frozen=True)
class Chunk:
    tag: Any
    samples: np.ndarray  # float32, 24 kHz mono


@dataclass(frozen=True)
class Done:
    tag: Any  # spoken whole, or cancelled


@dataclass(frozen=True)
class Failed:
    tag: Any
    message: str
    internal: bool  # a fault of the server, not of the request


Event = Chunk | Done | Failed


class Stream:
    """One client's place. `submit`, `cancel` and `close` may be called from any thread; `emit` is called on the
    stream's thread."""

    def __init__(self, scheduler: "Scheduler", emit: Callable[[Event], None]) -> None:
        self._scheduler = scheduler
        self._emit = emit
        self._lock = threading.Condition()
        self._jobs: deque[tuple[Any, Start]] = deque()
        self._speaking: Any = None  # the tag being spoken
        self._cancelled = False  # the one being spoken
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="csm-stream", daemon=True)
        self._thread.start()

    def submit(self, tag: Any, start: Start) -> None:
        """Queues an utterance; its chunks are emitted as Chunk(tag, ...), then Done(tag) or Failed(tag, ...)."""
        with self._lock:
            self._jobs.append((tag, start))
            self._lock.notify()

    def cancel(self, tags: Collection[Any]) -> None:
        """Drops the utterances of `tags`: queued, they are never spoken; being spoken, its generation stops before
        its next frame. Either way Done(tag) follows for each."""
        with self._lock:
            queued = [job for job in self._jobs if job[0] in tags]
            for job in queued:
                self._jobs.remove(job)
            speaking = self._speaking in tags and not self._cancelled
            self._cancelled |= speaking
        for tag, _ in queued:
            self._emit(Done(tag))
        if speaking:
            self._scheduler.generator.close_owned(self)

    @property
    def stopped(self) -> bool:
        """Whether a speech it starts now is to end at once: the stream is closed, or its utterance cancelled."""
        return self.closed or self._cancelled

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._jobs.clear()
            self._lock.notify()
        self._scheduler._remove(self)
        self._scheduler.generator.close_owned(self)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self.closed or self._jobs):
                    self._lock.wait()
                if self.closed:
                    return
                tag, start = self._jobs.popleft()
                self._speaking, self._cancelled = tag, False
            self._speak(tag, start)
            with self._lock:
                self._speaking = None

    def _speak(self, tag: Any, start: Start) -> None:
        try:
            chunks = start()
            try:
                for samples in chunks:
                    if self.stopped:
                        break
                    self._emit(Chunk(tag, samples))
            finally:
                chunks.close()  # type: ignore[attr-defined]
        except Exception as error:  # reported to the client; the server goes on
            if not self.closed:
                self._fail(tag, error)
            return
        if not self.closed:
            self._emit(Done(tag))

    def _fail(self, tag: Any, error: Exception) -> None:
        if isinstance(error, CsmError):
            self._emit(Failed(tag, str(error), internal=False))
        else:
            traceback.print_exception(error, file=sys.stderr)
            self._emit(Failed(tag, f"generation failed ({type(error).__name__}); the server goes on", internal=True))


class Scheduler:
    def __init__(self, generator: StreamingGenerator, max_streams: int) -> None:
        """At most `max_streams` streams open at once, generated together in `generator`'s engine (which has as many
        slots)."""
        assert max_streams >= 1, max_streams
        assert generator.engine.slots >= max_streams, "the generator's engine must have a slot per stream"
        self.generator = generator
        self.max_streams = max_streams
        self._lock = threading.Lock()
        self._streams: list[Stream] = []

    def stop(self) -> None:
        """Closes every stream and stops the generator: its engine is stepped no more."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.close()
        self.generator.close()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def open(self, emit: Callable[[Event], None]) -> Stream:
        """A new stream, or ServerBusy at once when all `max_streams` are taken."""
        with self._lock:
            if len(self._streams) >= self.max_streams:
                raise ServerBusy(f"all {self.max_streams} streams are busy (--max-streams): try again shortly")
            stream = Stream(self, emit)
            self._streams.append(stream)
            return stream

    def _remove(self, stream: Stream) -> None:
        with self._lock:
            self._streams.remove(stream)
