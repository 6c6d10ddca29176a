"""The scheduler: the one owner of a frame engine. Stepped by the model thread (`threads.ModelThread`), it steps the
engine while any stream is in it and hands each stream its frames; a stream (`Speech`) is a queue its consumer reads,
from any thread.

Streams join the engine in the order they were started, as slots are free, and those waiting when a step is due
join together before it; a stream closed by its consumer leaves the engine before the next step, so no frame of it
is generated after. A step that fails fails every stream in the engine with its error, and the engine starts afresh.
"""

import threading
from collections import deque
from collections.abc import Hashable, Iterator
from typing import Protocol

import numpy as np
import torch

from ..threads import MODEL_THREAD
from .engine import Frame, FrameEngine, Prompt


class Owner(Hashable, Protocol):
    """Who may close the streams it starts (`Scheduler.close_owned`), from another thread than the one starting them."""

    @property
    def stopped(self) -> bool:
        """Whether a stream it starts now is to end at once: one started just as its owner is closed, after
        `close_owned` looked for them, is not left to run."""


class Speech(Iterator[np.ndarray]):
    """One utterance being generated: iterating yields float32 chunks of `chunk_frames` frames (the last may be
    shorter) as the model thread generates them, waiting for them; `codes` holds the codes [C, T] of the frames
    yielded so far. `close()`, from any thread, ends it: its generation stops before its next frame, and a speech closed
    before its end is `cut`."""

    def __init__(self, scheduler: "Scheduler", seed: int, chunk_frames: int, owner: Owner | None) -> None:
        self.seed = seed
        self.owner = owner
        self._scheduler = scheduler
        self._chunk_frames = chunk_frames
        self._ready = threading.Condition()
        self._frames: deque[Frame] = deque()
        self._ended = False
        self.cut = False
        self._error: BaseException | None = None
        self._yielded: list[np.ndarray] = []

    def __next__(self) -> np.ndarray:
        with self._ready:
            while not (self._ended or self._error or len(self._frames) >= self._chunk_frames):
                self._ready.wait()
            if self._error is not None:
                error, self._error, self._ended = self._error, None, True
                raise error
            if not self._frames:
                raise StopIteration
            chunk = [self._frames.popleft() for _ in range(min(self._chunk_frames, len(self._frames)))]
        self._yielded.extend(frame.codes for frame in chunk)
        return np.concatenate([frame.samples for frame in chunk])

    def close(self) -> None:
        with self._ready:
            if self._ended:
                return
            self._ended = self.cut = True
            self._frames.clear()
            self._ready.notify_all()
        self._scheduler._closed(self)

    @property
    def codes(self) -> np.ndarray:
        if not self._yielded:
            return np.zeros((0, 0), dtype=np.int64)
        return np.stack(self._yielded, axis=1)

    def _put(self, frames: list[Frame], ended: bool) -> None:
        """From the model thread: the next frames, and whether they are the last."""
        with self._ready:
            if not self._ended:
                self._frames.extend(frames)
                self._ended = ended
                self._ready.notify_all()

    def _fail(self, error: BaseException) -> None:
        with self._ready:
            if not self._ended:
                self._error = error
                self._ready.notify_all()


class Scheduler:
    """Steps `engine` on the model thread, which steps it from the first stream on."""

    def __init__(self, engine: FrameEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Speech, Prompt]] = deque()  # to join, first started first
        self._closing: list[Speech] = []  # closed while in the engine
        self._joined: set[Speech] = set()
        self._stopping = False

    def speak(self, prompt: Prompt, chunk_frames: int = 1, owner: Owner | None = None) -> Speech:
        """Starts a stream of `prompt`'s frames, from any thread. `owner`: who may close it with `close_owned`; a
        stream started while its owner is `stopped` ends at once, with no frame."""
        speech = Speech(self, prompt.seed, chunk_frames, owner)
        with self._lock:
            if owner is not None and owner.stopped:  # checked under the lock that `close_owned` looks under
                speech._ended = speech.cut = True
                return speech
            self._waiting.append((speech, prompt))
        MODEL_THREAD.wake(self)
        return speech

    def close_owned(self, owner: Owner) -> None:
        """Closes every stream of `owner`, started or waiting."""
        with self._lock:
            owned = [speech for speech in (*self._joined, *(speech for speech, _ in self._waiting))
                     if speech.owner is owner]
        for speech in owned:
            speech.close()

    def stop(self) -> None:
        """Steps the engine no more, once its step is done; the streams in it get no more frames."""
        with self._lock:
            self._stopping = True
        MODEL_THREAD.detach(self)
        with self._lock:
            ended = [*self._joined, *(speech for speech, _ in self._waiting)]
            self._joined, self._waiting = set(), deque()
        for speech in ended:
            speech._put([], ended=True)

    def _closed(self, speech: Speech) -> None:
        with self._lock:
            waiting = [entry for entry in self._waiting if entry[0] is not speech]
            if len(waiting) == len(self._waiting):
                self._closing.append(speech)
            self._waiting = deque(waiting)
        MODEL_THREAD.wake(self)

    def step(self) -> bool:
        """From the model thread: streams closed leave the engine, those waiting join it as slots are free, and the
        engine steps if it has something to do -> whether there is more to do."""
        engine = self.engine
        with self._lock:
            if self._stopping or not (self._waiting or self._closing or engine.busy):
                return False
            closing, self._closing = self._closing, []
            self._joined.difference_update(closing)
        try:
            with torch.inference_mode():
                for speech in closing:
                    engine.leave(speech)
                with self._lock:
                    joining = [self._waiting.popleft() for _ in range(min(len(self._waiting), len(engine.free)))]
                    self._joined.update(speech for speech, _ in joining)
                for speech, prompt in joining:
                    engine.join(speech, prompt)
                deliveries = engine.step() if engine.busy else []
        except Exception as error:  # every stream in the engine fails with it; the engine starts afresh
            engine.abandon()
            with self._lock:
                failed, self._joined = self._joined, set()
            for speech in failed:
                speech._fail(error)
            return True
        for delivery in deliveries:
            delivery.owner._put(delivery.frames, delivery.ended)
            if delivery.ended:
                with self._lock:
                    self._joined.discard(delivery.owner)
        return True
