"""`csm say`: a conversation's chunks sent where they are asked to go: the sound card, a WAV file, raw PCM on
stdout, one WAV per line. Everything here runs after the options have been checked."""

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .conversation import Conversation, utterances
from .ending import window_words
from .generator import Settings, StreamingGenerator
from .pcm import PcmFormat, RawPcmWriter
from .prompt import Segment
from .script import Passage
from .wav import WavWriter

# Speech runs at about 2.5 words a second: how long the player expects one text to last.
WORDS_PER_SECOND_SPOKEN = 2.5


@dataclass(frozen=True)
class Output:
    play: bool
    device: str | None = None
    wav: Path | None = None
    raw: PcmFormat | None = None  # raw PCM on stdout in this format
    out_dir: Path | None = None
    quiet: bool = False
    stats: bool = False
    live_status: bool = True  # an updating status line where stderr is a terminal; off while the user types lines


def warn(message: str) -> None:
    print(f"csm: warning: {message}", file=sys.stderr)


def flag_waits(passages: Iterable[Passage], waiting: threading.Event, reading: threading.Event) -> Iterator[Passage]:
    """The passages, with `waiting` set whenever the next one is asked for (the player clears it with audio), and
    `reading` set only until it has come."""
    source = iter(passages)
    while True:
        waiting.set()
        reading.set()
        passage = next(source, None)
        reading.clear()
        if passage is None:
            return
        yield passage


def say(passages: Iterable[Passage], *, load: Callable[[], StreamingGenerator], speaker: int, settings: Settings,
        prompts: list[Segment], memory: bool, pause_seconds: float, output: Output,
        expected_seconds: float | None = None,
        voices: Callable[[StreamingGenerator], list[Segment]] = lambda generator: []) -> None:
    """Speaks `passages`; with `expected_seconds` None they come from a live source (stdin) that may block. `voices`
    gives the voice prompts of the loaded generator, put before `prompts`."""
    generator = load()
    conversation = Conversation(generator, settings, [*voices(generator), *prompts], memory, pause_seconds,
                                output.out_dir)
    waiting = threading.Event()
    reading = threading.Event()
    if expected_seconds is None:
        passages = flag_waits(passages, waiting, reading)
    chunks = conversation.speak(utterances(passages, speaker, window_words(generator.model.max_seq_len), warn))
    sink = WavWriter(output.wav) if output.wav else RawPcmWriter(fmt=output.raw) if output.raw else None
    started = time.monotonic()
    playback = None
    try:
        if output.play:
            playback = _play(chunks, sink.write if sink else None, output, expected_seconds, waiting, reading)
        else:
            for chunk in chunks:
                if sink:
                    sink.write(chunk)
    finally:
        if isinstance(sink, WavWriter):
            sink.close()
    _report(conversation, started, playback, output)


def _play(chunks: Iterator[np.ndarray], record: Callable[[np.ndarray], None] | None, output: Output,
          expected_seconds: float | None, waiting: threading.Event, reading: threading.Event) -> dict[str, Any]:
    from rich.console import Console

    from . import library_messages
    from .playback import PlaybackStatus, play
    from .status import StatusDisplay, summary

    console = None if output.live_status else Console(stderr=True, force_terminal=False)
    messages_before = library_messages.count()
    age_at_play = process_age_s()
    with StatusDisplay(console, quiet=output.quiet) as display:

        def status(current: PlaybackStatus) -> None:
            """Nothing to play while the next line is read is a wait for text, before the first line too."""
            idle = current.buffer_seconds == 0 and current.state in ("buffering", "waiting")
            display(replace(current, state="waiting") if idle and reading.is_set() else current)

        stats = play(chunks, device=output.device, record=record, on_status=status,
                     expected_seconds=expected_seconds, waiting=waiting)
    messages = library_messages.count() - messages_before
    if not output.quiet:
        hidden = f", {messages} sound-library messages kept off the terminal" if messages else ""
        print(summary(stats) + hidden, file=sys.stderr)
    first_sound = None if stats.time_to_first_audio_s is None else age_at_play + stats.time_to_first_audio_s
    return {**stats.to_dict(), "launch_to_first_sound_s": first_sound, "sound_library_messages": messages}


def process_age_s() -> float:
    """Seconds since this process was launched: its start time in /proc/self/stat, in clock ticks since boot."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()  # from field 3, after the command name
    return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _report(conversation: Conversation, started: float, playback: dict[str, Any] | None, output: Output) -> None:
    seconds = conversation.samples / SAMPLE_RATE
    if not output.quiet and playback is None:
        elapsed = time.monotonic() - started
        rtf = f"{elapsed / seconds:.2f}" if seconds else "-"
        print(f"{seconds:.1f} s of speech in {len(conversation.lines)} utterances, RTF {rtf}", file=sys.stderr)
    if output.stats:
        record = {"seconds": seconds, "threads": torch.get_num_threads(), "playback": playback,
                  "utterances": [line.to_dict(started) for line in conversation.lines]}
        print(json.dumps(record), file=sys.stderr)


def expected_seconds(text: str) -> float:
    """About how long a text takes to say, for the player's start policy."""
    return len(text.split()) / WORDS_PER_SECOND_SPOKEN
