"""Plays a chunk stream through the sound card while it is still being generated.

Two threads meet at a ring. A producer thread is the only one that iterates the chunks (in production that runs
the model) and writes them into the ring, blocking while it is full. PortAudio's callback copies from the ring to
the sound card, or silence when the ring runs dry (an underrun). The main thread decides when to start the stream,
reports status, watches that the sound card keeps taking audio, and on Ctrl-C or an error stops everything and
re-raises. A sound server that dies is an error at once, one that freezes within STALL_S, not a run that hangs or
ends "done".
"""

import atexit
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
from rich.table import Table

from ..audio import FRAME_SECONDS, SAMPLE_RATE, SAMPLES_PER_FRAME
from ..errors import CsmError
from . import library_messages
from .ring import RingBuffer

PlaybackState = Literal["buffering", "speaking", "waiting", "draining", "done"]

DEFAULT_RING_SECONDS = 5.0
PREROLL_MARGIN_S = 0.25  # spare audio kept in hand when generation is slower than real time
STATUS_INTERVAL_S = 0.1
TAIL_PADDING_S = 0.05  # silence fed after the last sample on top of the stream's latency: PortAudio drops the rest
# The sound card not asking for audio this long, once started, is a fault of the sound server (it froze or died). A
# sound server may take audio in bursts: PulseAudio renders a sink's whole latency at once, up to 2 s (a null sink
# with its default options while nothing records it), and asks for nothing in between; a loaded machine adds to it.
STALL_S = 3.0
PRODUCER_JOIN_S = 0.05
STREAM_CLOSE_S = 0.1  # longest the main thread waits for PortAudio to let go of a stream after an error
NO_PLAY_HINT = "or write a file instead with --out FILE --no-play"


@dataclass(frozen=True)
class PlaybackStatus:
    state: PlaybackState
    seconds_played: float  # generated audio handed to the sound card so far
    buffer_seconds: float  # generated audio waiting in the ring
    realtime_factor: float | None  # generation wall time / audio seconds generated; None before the first chunk


@dataclass(frozen=True)
class PlaybackStats:
    time_to_first_audio_s: float | None  # from play() to the stream's start; None when nothing was generated
    seconds_generated: float
    seconds_played: float
    underruns: int  # gaps in playback because the ring ran dry before the producer finished
    realtime_factor: float | None
    preroll_wait_s: float  # from the first chunk in the ring to the stream's start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preroll_satisfied(
    buffered_s: float,
    generated_s: float,
    elapsed_s: float,
    expected_total_s: float | None,
    capacity_s: float,
    margin_s: float = PREROLL_MARGIN_S,
) -> bool:
    """Whether playback can start now and the rest of the utterance follow without a gap.

    ``generated_s`` seconds of audio took ``elapsed_s`` to generate. At least as fast as real time, one chunk is
    enough. Slower, the rest (``expected_total_s - generated_s``) arrives within ``rest * elapsed_s / generated_s``,
    while what is buffered plus the rest plays for ``buffered_s + rest``: start once the first, plus a margin, is
    no longer than the second. Without an estimate of the total, or when the ring is full, wait for a full ring.
    """
    if generated_s <= 0:
        return False
    if elapsed_s <= generated_s or buffered_s >= capacity_s:
        return True
    if expected_total_s is None:
        return False
    rest_s = expected_total_s - generated_s
    return rest_s <= 0 or rest_s * elapsed_s / generated_s + margin_s <= buffered_s + rest_s


def _sounddevice() -> ModuleType:
    """sounddevice, imported on first use: it loads the system's PortAudio library. The sound libraries' own
    messages are kept off the terminal from then on."""
    library_messages.keep_off_terminal()
    try:
        import sounddevice
    except OSError as e:
        raise CsmError(f"cannot play audio: {e} (install it, e.g. apt install libportaudio2), {NO_PLAY_HINT}") from None
    return sounddevice


def _output_device(sd: ModuleType, device: int | str | None) -> dict[str, Any]:
    """PortAudio's description of the output device: an index, a name (substrings, as sounddevice matches them),
    a string of digits (an index), or None for the default."""
    if isinstance(device, str) and device.isdigit():
        device = int(device)
    try:
        return sd.query_devices(device, kind="output")
    except (ValueError, sd.PortAudioError) as e:
        if device is None:
            raise CsmError(f"no audio output device found: connect one, {NO_PLAY_HINT}") from None
        reason = " ".join(str(e).split())
        raise CsmError(f"unknown output device {device!r} ({reason}): see `csm devices`, {NO_PLAY_HINT}") from None


def check_output_device(device: int | str | None) -> None:
    """Fails with what to do when play() would find no such output device: checked before the model loads."""
    _output_device(_sounddevice(), device)


def output_devices() -> list[dict[str, Any]]:
    """The devices PortAudio can play to, for ``csm devices``."""
    sd = _sounddevice()
    host_apis = sd.query_hostapis()
    default = sd.default.device[1]
    return [
        {
            "index": index,
            "name": info["name"],
            "host_api": host_apis[info["hostapi"]]["name"],
            "channels": info["max_output_channels"],
            "default_samplerate": info["default_samplerate"],
            "is_default": index == default,
        }
        for index, info in enumerate(sd.query_devices())
        if info["max_output_channels"] > 0
    ]


def render_device_table(devices: list[dict[str, Any]]) -> Table:
    table = Table("", "index", "name", "host API", "channels", "default rate")
    for device in devices:
        table.add_row(
            "*" if device["is_default"] else "",
            str(device["index"]),
            device["name"],
            device["host_api"],
            str(device["channels"]),
            f"{device['default_samplerate']:g} Hz",
        )
    return table


class Underruns:
    """Underruns as a listener hears them: one per gap in the audio, however many blocks the gap lasts; a block that
    plays some samples before running dry starts a new gap."""

    def __init__(self) -> None:
        self.count = 0
        self._in_gap = False

    def short_block(self, samples: int) -> None:
        """A block ran dry after `samples` samples."""
        if samples or not self._in_gap:
            self.count += 1
        self._in_gap = True

    def full_block(self) -> None:
        self._in_gap = False


class _Callback:
    """PortAudio's stream callback: copies from the ring, or silence. Runs on the audio thread, so it only copies
    into preallocated arrays and counts."""

    def __init__(self, ring: RingBuffer, callback_stop: type[Exception], waiting: threading.Event) -> None:
        self._ring = ring
        self._callback_stop = callback_stop
        self._waiting = waiting
        self.holding = False  # silence while the source waits for input, until the player resumes
        self.tail_samples_left = 0  # set from the stream's latency before it starts
        self.played_samples = 0
        self.underruns = Underruns()
        self.calls = 0  # the main thread's sign that the sound card is still taking audio
        self.stopped = False  # the stream ends because every sample was played, not because it failed

    def __call__(self, outdata: np.ndarray, frames: int, when: Any, flags: Any) -> None:
        self.calls += 1
        out = outdata[:, 0]
        if self.holding and not self._ring.closed:
            out[:] = 0.0
            return
        ended = self._ring.closed  # read before the ring: a short read after this is the end, not an underrun
        count = self._ring.read_into(out)
        self.played_samples += count
        if count < frames:
            out[count:] = 0.0
            if ended:
                self.tail_samples_left -= frames - count
            elif self._waiting.is_set():
                self.holding = True
            else:
                self.underruns.short_block(count)
        else:
            self.underruns.full_block()
        if ended and self.tail_samples_left <= 0:
            self.stopped = True
            raise self._callback_stop


class _Worker(threading.Thread):
    """A daemon thread that keeps what its target raised, and sets ``wake`` when it ends."""

    def __init__(self, name: str, target: Callable[[], None], wake: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self._wake = wake
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as e:
            self.error = e
        finally:
            self._wake.set()


class _Player:
    def __init__(
        self,
        chunks: Iterator[np.ndarray],
        ring_seconds: float,
        expected_seconds: float | None,
        waiting: threading.Event,
    ) -> None:
        self._chunks = chunks
        self.waiting = waiting
        self._expected_seconds = expected_seconds
        self.ring = RingBuffer(max(1, math.ceil(ring_seconds / FRAME_SECONDS)))
        self.stop = threading.Event()
        self.wake = threading.Event()  # set when a chunk is in the ring, a worker ends or the stream finishes
        self.finished = threading.Event()  # set by PortAudio when the stream has stopped
        self.generated_samples = 0
        self.timed_samples = 0  # of the chunks whose generation time was measured
        self.generation_s = 0.0
        self.first_chunk_at: float | None = None

    def produce(self) -> None:
        """The producer thread: the only code that iterates, and closes, the chunks."""
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                chunk = next(self._chunks, None)
                if chunk is None:
                    return
                arrived = time.monotonic()
                assert chunk.dtype == np.float32 and chunk.ndim == 1, (chunk.dtype, chunk.shape)
                assert len(chunk) % SAMPLES_PER_FRAME == 0, len(chunk)
                if self.first_chunk_at is None:
                    self.first_chunk_at = arrived
                self.generated_samples += len(chunk)
                if not self.waiting.is_set():  # a wait for input is not generation: leave it out of the speed
                    self.generation_s += arrived - started
                    self.timed_samples += len(chunk)
                if not self.ring.write(chunk, self.stop):
                    return
                self.waiting.clear()
                self.wake.set()
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
            self.ring.close()

    def can_play(self) -> bool:
        """Whether to start (or resume after a wait for input): what is buffered can play through, or all that is
        coming for now is buffered (the source ended, or waits for input)."""
        if self.ring.fill == 0:
            return False
        return self.ring.closed or self.waiting.is_set() or preroll_satisfied(
            buffered_s=self.ring.fill_seconds,
            generated_s=self.timed_samples / SAMPLE_RATE,
            elapsed_s=self.generation_s,
            expected_total_s=self._expected_seconds,
            capacity_s=self.ring.capacity / SAMPLE_RATE,
        )

    def realtime_factor(self) -> float | None:
        return self.generation_s * SAMPLE_RATE / self.timed_samples if self.timed_samples else None

    def status(self, state: PlaybackState, callback: _Callback) -> PlaybackStatus:
        return PlaybackStatus(
            state=state,
            seconds_played=callback.played_samples / SAMPLE_RATE,
            buffer_seconds=self.ring.fill_seconds,
            realtime_factor=self.realtime_factor(),
        )

    def stats(self, callback: _Callback, play_started_at: float, stream_started_at: float | None) -> PlaybackStats:
        preroll_wait_s = 0.0
        if stream_started_at is not None:
            assert self.first_chunk_at is not None
            preroll_wait_s = stream_started_at - self.first_chunk_at
        return PlaybackStats(
            time_to_first_audio_s=None if stream_started_at is None else stream_started_at - play_started_at,
            seconds_generated=self.generated_samples / SAMPLE_RATE,
            seconds_played=callback.played_samples / SAMPLE_RATE,
            underruns=callback.underruns.count,
            realtime_factor=self.realtime_factor(),
            preroll_wait_s=preroll_wait_s,
        )


def _raise_worker_error(worker: _Worker) -> None:
    if worker.error is not None:
        raise worker.error


class _Watchdog:
    """Whether the sound card still asks for audio: the callback's count of calls must move within STALL_S.

    The clock runs only while this process does: when the checks themselves were held up (the process stopped with
    Ctrl-Z or SIGSTOP, or starved by a loaded machine), the callback had no chance to run either, so it starts over.
    """

    def __init__(self, callback: _Callback) -> None:
        self._callback = callback
        self._calls = callback.calls
        self._moved_at = self._checked_at = time.monotonic()

    def check(self, device_name: str) -> None:
        now = time.monotonic()
        held_up = now - self._checked_at > STALL_S / 2
        self._checked_at = now
        if self._callback.calls != self._calls or held_up:
            self._calls, self._moved_at = self._callback.calls, now
        elif now - self._moved_at > STALL_S:
            raise CsmError(f"output device {device_name!r} stopped taking audio for {STALL_S:g} s (the sound server "
                           f"froze or died): playback stopped, {NO_PLAY_HINT}")


def _close_stream(sd: ModuleType, stream: Any, abort: bool) -> None:
    """Stops and closes the stream, waiting at most STREAM_CLOSE_S when it ends on an error: a frozen sound server
    can block PortAudio's stop for ever, and the program must still end. Its exit does not wait for this thread, and
    does not end PortAudio either (sounddevice does at exit), which would block as long on the stream left open."""
    def close() -> None:
        if abort:
            stream.abort()
        stream.close()

    if not abort:
        close()
        return
    closer = threading.Thread(target=close, name="csm-stream-close", daemon=True)
    closer.start()
    closer.join(STREAM_CLOSE_S)
    if closer.is_alive():
        atexit.unregister(sd._exit_handler)


def _start(sd: ModuleType, stream: Any, device_name: str) -> None:
    try:
        stream.start()
    except sd.PortAudioError as e:
        reason = " ".join(str(e).split())
        raise CsmError(f"output device {device_name!r} did not start ({reason}), {NO_PLAY_HINT}") from None


def play(
    chunks: Iterator[np.ndarray],
    *,
    device: int | str | None = None,
    on_status: Callable[[PlaybackStatus], None] | None = None,
    ring_seconds: float = DEFAULT_RING_SECONDS,
    expected_seconds: float | None = None,
    waiting: threading.Event | None = None,
) -> PlaybackStats:
    """Plays float32 24 kHz mono chunks (whole frames) as they are generated; returns when every sample has
    reached the speaker. ``expected_seconds`` (an estimate of the whole
    utterance) lets a slower-than-real-time start wait just long enough to play without a gap. ``waiting`` is set
    by a source that blocks for input (lines on stdin) and cleared here with its next chunk: the ring running dry
    meanwhile is a pause, not an underrun, and playback resumes under the same start policy.

    Must run in the main thread: Ctrl-C stops playback, stops the producer at its next chunk and re-raises
    KeyboardInterrupt. An exception from the chunk iterator is re-raised here; a sound card that stops taking audio
    or a stream that ends before its last sample raises CsmError."""
    started_at = time.monotonic()
    sd = _sounddevice()
    info = _output_device(sd, device)
    player = _Player(chunks, ring_seconds, expected_seconds, waiting or threading.Event())
    callback = _Callback(player.ring, sd.CallbackStop, player.waiting)

    def stream_finished() -> None:
        player.finished.set()
        player.wake.set()

    try:
        sd.check_output_settings(device=info["index"], channels=1, dtype="float32", samplerate=SAMPLE_RATE)
        stream = sd.OutputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="float32",
            device=info["index"],
            callback=callback,
            finished_callback=stream_finished,
        )
    except sd.PortAudioError as e:
        raise CsmError(
            f"output device {info['name']!r} cannot play {SAMPLE_RATE} Hz float32 mono ({e}), {NO_PLAY_HINT}"
        ) from None
    callback.tail_samples_left = math.ceil((stream.latency + TAIL_PADDING_S) * SAMPLE_RATE)

    producer = _Worker("csm-producer", player.produce, player.wake)
    stream_started_at: float | None = None
    watchdog: _Watchdog | None = None
    try:
        producer.start()
        next_status_at = time.monotonic()
        while not player.finished.is_set():
            player.wake.wait(max(0.0, next_status_at - time.monotonic()))
            player.wake.clear()
            _raise_worker_error(producer)
            if stream_started_at is None:
                if player.ring.drained:
                    break  # the stream ended before any audio
                if player.can_play():
                    _start(sd, stream, info["name"])
                    stream_started_at = time.monotonic()
                    watchdog = _Watchdog(callback)
            else:
                assert watchdog is not None
                watchdog.check(info["name"])
                if callback.holding and player.can_play():
                    callback.holding = False
            if time.monotonic() >= next_status_at:
                next_status_at = time.monotonic() + STATUS_INTERVAL_S
                if on_status is not None:
                    state: PlaybackState = (
                        "buffering" if stream_started_at is None
                        else "draining" if player.ring.closed
                        else "buffering" if callback.holding and player.ring.fill
                        else "waiting" if callback.holding
                        else "speaking"
                    )
                    on_status(player.status(state, callback))
        if stream_started_at is not None and not callback.stopped:
            raise CsmError(f"output device {info['name']!r} ended the stream before the last sample (the sound "
                           f"server died): playback stopped, {NO_PLAY_HINT}")
    except BaseException:
        player.stop.set()  # a producer still running ends at its next chunk and closes the chunks
        _close_stream(sd, stream, abort=True)
        producer.join(PRODUCER_JOIN_S)  # not longer: it may be inside a long model step, and it is a daemon
        raise
    _close_stream(sd, stream, abort=False)
    producer.join()  # it has closed the ring: it is done
    _raise_worker_error(producer)

    if on_status is not None:
        on_status(player.status("done", callback))
    return player.stats(callback, started_at, stream_started_at)
