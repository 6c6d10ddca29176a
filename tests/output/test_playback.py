"""Playback through a real PulseAudio null sink: the sound card gets every generated sample, to the last one."""

import ctypes.util
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pulse import aligned, similarity

from csm_cli.audio import FRAME_SECONDS, SAMPLE_RATE, SAMPLES_PER_FRAME
from csm_cli.errors import CsmError
from csm_cli.output.playback import (
    STALL_S,
    PlaybackStatus,
    output_devices,
    play,
    preroll_satisfied,
    render_device_table,
)

REPO = Path(__file__).resolve().parents[2]
TAIL_SAMPLES = SAMPLE_RATE // 10  # the last 100 ms, which a player that stops too early loses

PLAY_UNTIL_INTERRUPTED = """
import signal, sys, time
import numpy as np
from csm_cli.output.playback import play

interrupted_at = 0.0

def interrupt(signum, frame):
    global interrupted_at
    interrupted_at = time.monotonic()
    raise KeyboardInterrupt

def endless_chunks():
    rng = np.random.default_rng(0)
    try:
        while True:
            yield (0.1 * rng.standard_normal(1920)).astype(np.float32)
    finally:
        print("chunks closed", flush=True)

def report(status):
    if status.state == "speaking" and not report.seen:
        report.seen = True
        print("speaking", flush=True)
report.seen = False

signal.signal(signal.SIGINT, interrupt)
try:
    play(endless_chunks(), on_status=report)
except KeyboardInterrupt:
    print(f"play() ended {time.monotonic() - interrupted_at:.3f} s after SIGINT", flush=True)
    sys.exit(130)
"""

PLAY_UNTIL_THE_SERVER_FAULTS = """
import os, sys, time
import numpy as np
from csm_cli.errors import CsmError
from csm_cli.output.playback import play

server, fault = int(sys.argv[1]), int(sys.argv[2])
faulted_at = []

def noise():
    rng = np.random.default_rng(0)
    for _ in range(50):  # 4 s
        yield (0.1 * rng.standard_normal(1920)).astype(np.float32)

def report(status):
    if status.seconds_played > 0.3 and not faulted_at:
        os.kill(server, fault)
        faulted_at.append(time.monotonic())

try:
    play(noise(), on_status=report)
except CsmError as e:
    print(f"{e}\\n{faulted_at[0]} {time.monotonic()}", flush=True)  # CLOCK_MONOTONIC: the parent's clock too
    sys.exit(1)
"""


def _test_signal(seconds: float, seed: int = 0) -> np.ndarray:
    """Seeded noise under a random envelope: never periodic, so it aligns at one offset only; never exactly 0."""
    rng = np.random.default_rng(seed)
    count = round(seconds / FRAME_SECONDS) * SAMPLES_PER_FRAME
    envelope = np.interp(np.arange(count), np.linspace(0, count, 40), rng.uniform(0.05, 0.4, 40))
    samples = (rng.standard_normal(count) * envelope).clip(-0.95, 0.95).astype(np.float32)
    assert np.all(samples != 0)
    return samples


def _chunks(
    samples: np.ndarray, frames_per_chunk: tuple[int, ...] = (1, 3, 2), seconds_per_frame: float = 0.0
) -> Iterator[np.ndarray]:
    """The signal in chunks of whole frames, each taking ``seconds_per_frame`` per frame to "generate"."""
    frames = len(samples) // SAMPLES_PER_FRAME
    start = 0
    for size in itertools.cycle(frames_per_chunk):
        if start >= frames:
            return
        size = min(size, frames - start)
        time.sleep(seconds_per_frame * size)
        yield samples[start * SAMPLES_PER_FRAME : (start + size) * SAMPLES_PER_FRAME].copy()
        start += size


def test_the_speaker_gets_every_sample(pulse_server, tmp_path):
    speech = _test_signal(3.0)
    statuses: list[PlaybackStatus] = []
    with pulse_server.record_monitor(tmp_path / "monitor.raw") as monitor:
        stats = play(_chunks(speech), on_status=statuses.append)

    assert stats.underruns == 0
    assert stats.seconds_generated == stats.seconds_played == len(speech) / SAMPLE_RATE
    assert stats.time_to_first_audio_s is not None and stats.time_to_first_audio_s < 0.5
    heard = aligned(monitor.samples(), speech)
    assert similarity(heard, speech) >= 0.999
    assert similarity(heard[-TAIL_SAMPLES:], speech[-TAIL_SAMPLES:]) >= 0.999, "the end was cut off"
    states = [status.state for status in statuses]
    assert states[-1] == "done"
    assert "draining" in states  # the producer is done long before the sound card
    assert statuses[-1].seconds_played == stats.seconds_played


def test_underruns_are_counted(pulse_server):
    """Slower than real time with no estimate of the length, playback starts on a full ring and then runs dry."""
    speech = _test_signal(0.64)
    stats = play(_chunks(speech, frames_per_chunk=(1,), seconds_per_frame=0.12), ring_seconds=0.16)

    assert stats.underruns > 0
    assert stats.preroll_wait_s > 0.05
    assert stats.seconds_played == stats.seconds_generated == len(speech) / SAMPLE_RATE


def test_waiting_for_input_is_a_pause_and_a_buffered_line_plays_while_the_source_waits_again(pulse_server):
    """A line source on stdin, generating slower than real time: each line waits in the ring until it can play
    through, or until the source waits for the user's next line; the ring running dry meanwhile is a pause (no
    underrun, nothing recorded), and the time spent waiting is not generation time."""
    first, second = _test_signal(0.32, seed=1), _test_signal(0.48, seed=2)
    waiting = threading.Event()
    second_heard = threading.Event()

    def report(status: PlaybackStatus) -> None:
        if status.seconds_played * SAMPLE_RATE >= len(first) + len(second):
            second_heard.set()

    def lines() -> Iterator[np.ndarray]:
        yield from _chunks(first, frames_per_chunk=(1,), seconds_per_frame=0.12)
        waiting.set()
        time.sleep(0.5)  # the user types the next line
        yield from _chunks(second, frames_per_chunk=(1,), seconds_per_frame=0.12)
        waiting.set()
        assert second_heard.wait(5.0), "the second line stayed in the ring while the source waited"

    stats = play(lines(), on_status=report, waiting=waiting)
    assert stats.underruns == 0
    assert stats.realtime_factor is not None and 1.4 < stats.realtime_factor < 1.8  # 0.12 s per 80 ms frame


def test_slow_generation_waits_long_enough_to_play_without_a_gap(pulse_server):
    speech = _test_signal(1.6)
    statuses: list[PlaybackStatus] = []
    stats = play(
        _chunks(speech, frames_per_chunk=(1,), seconds_per_frame=0.1),
        on_status=statuses.append,
        expected_seconds=len(speech) / SAMPLE_RATE,
    )

    assert stats.underruns == 0
    assert 1.1 < stats.realtime_factor < 1.6
    assert stats.preroll_wait_s > 0.3
    states = [status.state for status in statuses]
    assert states.index("buffering") < states.index("speaking")


@pytest.mark.parametrize(
    ("buffered_s", "generated_s", "elapsed_s", "expected_total_s", "satisfied"),
    [
        (0.0, 0.0, 0.5, 4.0, False),  # nothing yet
        (0.08, 0.08, 0.04, 4.0, True),  # faster than real time: the first chunk is enough
        (0.08, 0.08, 0.16, None, False),  # slower, no estimate: wait for a full ring
        (2.0, 2.0, 4.0, None, True),  # the ring (2 s here) is full
        (1.0, 1.0, 2.0, 3.0, False),  # half real time: 2 s more take 4 s, but 1 + 2 s play
        (1.9, 1.9, 3.8, 3.0, True),  # 1.1 s more take 2.2 s + margin, 1.9 + 1.1 s play
        (0.5, 0.5, 1.5, 0.4, True),  # the estimate is reached already
    ],
)
def test_preroll_policy(buffered_s, generated_s, elapsed_s, expected_total_s, satisfied):
    assert preroll_satisfied(buffered_s, generated_s, elapsed_s, expected_total_s, capacity_s=2.0) is satisfied


def test_an_error_in_the_chunks_is_raised_by_play_promptly(pulse_server):
    error = RuntimeError("the model failed")

    def failing_chunks() -> Iterator[np.ndarray]:
        yield from _chunks(_test_signal(0.4))
        raise error

    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        play(failing_chunks())
    assert raised.value is error
    assert time.monotonic() - started < 1.0


def test_interrupt_stops_playback_and_closes_the_chunks(pulse_server):
    child = subprocess.Popen(
        [sys.executable, "-c", PLAY_UNTIL_INTERRUPTED],
        cwd=REPO,
        env={**os.environ, **pulse_server.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "speaking\n", child.communicate()
    time.sleep(1.0)
    interrupted = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=5)

    assert child.returncode == 130, err
    assert time.monotonic() - interrupted < 1.0
    assert "chunks closed" in out
    ended = re.search(r"play\(\) ended ([0-9.]+) s after SIGINT", out)
    assert ended is not None, out
    assert float(ended[1]) < 0.2


def test_devices_lists_the_sound_server(pulse_server):
    devices = output_devices()
    assert [device["name"] for device in devices if device["is_default"]] == ["default"]
    assert render_device_table(devices).row_count == len(devices)


@pytest.mark.parametrize("device", ["no such device", "99"])
def test_unknown_device_is_a_user_error(pulse_server, device):
    with pytest.raises(CsmError, match=rf"unknown output device .*{device}.*--out FILE --no-play"):
        play(_chunks(_test_signal(0.08)), device=device)


def test_a_device_given_as_digits_is_an_index(pulse_server):
    default = next(device for device in output_devices() if device["is_default"])
    stats = play(_chunks(_test_signal(0.16)), device=str(default["index"]))
    assert stats.seconds_played == 0.16


def test_no_output_device_is_a_user_error(no_sound_server):
    with pytest.raises(CsmError, match=r"no audio output device found: .*--out FILE --no-play"):
        play(_chunks(_test_signal(0.08)))


def test_missing_portaudio_is_a_user_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(CsmError, match=r"PortAudio library not found.*--out FILE --no-play"):
        output_devices()


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_sound_server_that_dies_or_freezes_mid_playback_is_an_error_soon(pulse_server, fault):
    """In a child process, which then exits as a program does, while the server is still frozen: PortAudio's stream
    to a frozen server cannot be closed, and that must not hold up the exit (nor this process, after the test)."""
    child = subprocess.Popen(
        [sys.executable, "-c", PLAY_UNTIL_THE_SERVER_FAULTS, str(pulse_server.pid), str(int(fault))],
        cwd=REPO,
        env={**os.environ, **pulse_server.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = child.communicate(timeout=STALL_S + 10)
    finally:
        child.kill()
        if fault == signal.SIGSTOP:
            os.kill(pulse_server.pid, signal.SIGCONT)
    exited_at = time.monotonic()
    assert child.returncode == 1, (out, err)
    assert err == "", err  # PortAudio's "Expression ... failed" lines as the server dies: counted, not printed
    message, times = out.splitlines()
    assert re.search(r"output device .* (stopped taking audio|ended the stream)", message), out
    faulted_at, raised_at = map(float, times.split())
    assert raised_at - faulted_at < (1.0 if fault == signal.SIGKILL else STALL_S + 1.0)
    assert exited_at - raised_at < 2.0  # the interpreter's teardown, on a loaded machine
