"""`csm say`: a conversation's chunks sent where they are asked to go: the sound card, an audio file, raw PCM on
stdout, one file per utterance. Everything here runs after the options have been checked.

Files and raw PCM get the chunks as they are generated, pauses between lines included, before they reach the
sound card: what the sound card did (an underrun, a fault) does not change them."""

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
from .errors import warn
from .generation.conversation import Conversation, utterances
from .generation.ending import budget_seconds
from .generation.generator import Settings, StreamingGenerator
from .generation.prompt import Segment
from .output.audiofile import AudioFileWriter, SampleFormat
from .output.pcm import RawPcmWriter
from .text.script import Passage

PRODUCER_POLL_S = 0.05


@dataclass(frozen=True)
class Output:
    play: bool
    device: str | None = None
    file: Path | None = None  # one audio file for the whole run
    raw: bool = False  # raw PCM on stdout
    sample_format: SampleFormat = "s16"  # of raw PCM and WAV files
    out_dir: Path | None = None
    quiet: bool = False
    stats: bool = False
    live_status: bool = True  # an updating status line where stderr is a terminal; off while the user types lines


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
                                output.out_dir, output.sample_format)
    waiting = threading.Event()
    reading = threading.Event()
    if expected_seconds is None:
        passages = flag_waits(passages, waiting, reading)
    chunks = conversation.speak(utterances(passages, speaker, conversation.max_words, warn))
    sink = (AudioFileWriter(output.file, output.sample_format) if output.file
            else RawPcmWriter(fmt=output.sample_format) if output.raw else None)
    recording = None if sink is None else Recording(sink)
    if recording is not None:
        chunks = recording.written(chunks)
    started = time.monotonic()
    playback = None
    try:
        if output.play:
            playback = _play(chunks, output, expected_seconds, waiting, reading)
        else:
            _generate(chunks)
    except KeyboardInterrupt:  # the process leaves at once (`cli.leave`): the model thread's step is not waited for
        raise
    except BaseException:
        generator.close()
        raise
    finally:
        conversation.close()
        if isinstance(sink, AudioFileWriter):
            sink.close()
    generator.close()
    _report(conversation, started, playback, None if recording is None else recording.launch_to_first_written_s,
            output)


def _generate(chunks: Iterator[np.ndarray]) -> None:
    """Runs through the chunks in a producer thread, so that the main thread stays free for Ctrl-C: a model step
    cannot be interrupted, and on a busy CPU one takes longer than the 200 ms Ctrl-C may take."""
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in chunks:
                pass
        except BaseException as e:
            errors.append(e)

    producer = threading.Thread(target=produce, name="csm-producer", daemon=True)
    producer.start()
    while producer.is_alive():
        producer.join(PRODUCER_POLL_S)
    if errors:
        raise errors[0]


class Recording:
    """Chunks written to a file or raw PCM as they are generated, and when the first was, from the launch."""

    def __init__(self, sink: AudioFileWriter | RawPcmWriter) -> None:
        self.sink = sink
        self.launch_to_first_written_s: float | None = None

    def written(self, chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The chunks, each written to the sink as it is generated."""
        for chunk in chunks:
            self.sink.write(chunk)
            if self.launch_to_first_written_s is None and len(chunk):
                self.launch_to_first_written_s = process_age_s()
            yield chunk


def _play(chunks: Iterator[np.ndarray], output: Output, expected_seconds: float | None,
          waiting: threading.Event, reading: threading.Event) -> dict[str, Any]:
    from rich.console import Console

    from .output import library_messages
    from .output.playback import PlaybackStatus, play
    from .output.status import StatusDisplay, summary

    console = None if output.live_status else Console(stderr=True, force_terminal=False)
    messages_before = library_messages.count()
    age_at_play = process_age_s()
    with StatusDisplay(console, quiet=output.quiet) as display:

        def status(current: PlaybackStatus) -> None:
            """Nothing to play while the next line is read is a wait for text, before the first line too."""
            idle = current.buffer_seconds == 0 and current.state in ("buffering", "waiting")
            display(replace(current, state="waiting") if idle and reading.is_set() else current)

        stats = play(chunks, device=output.device, on_status=status,
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


def _report(conversation: Conversation, started: float, playback: dict[str, Any] | None,
            launch_to_first_written_s: float | None, output: Output) -> None:
    seconds = conversation.samples / SAMPLE_RATE
    if not output.quiet and playback is None:
        elapsed = time.monotonic() - started
        rtf = f"{elapsed / seconds:.2f}" if seconds else "-"
        print(f"{seconds:.1f} s of speech in {len(conversation.lines)} utterances, RTF {rtf}", file=sys.stderr)
    if output.stats:
        record = {"seconds": seconds, "threads": torch.get_num_threads(), "playback": playback,
                  "launch_to_first_written_s": launch_to_first_written_s,
                  "utterances": [line.to_dict(started) for line in conversation.lines]}
        print(json.dumps(record), file=sys.stderr)


def expected_seconds(text: str) -> float:
    """How long a text may take to say, for the player's start policy: its frame budget (`ending.frame_budget`), an
    upper bound, so that a generator slower than real time starts playing only once the rest can follow without a
    gap (speech that ends sooner closes the stream, which starts playback at once)."""
    return budget_seconds(text)
