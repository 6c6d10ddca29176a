"""A conversation: utterances spoken one after another, each generated with what was said before as context.

Voice prompts stay at the start of the context; spoken utterances follow, oldest first, and the oldest are
dropped whole when the context and the next generation would not fit the model's window.
"""

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import FRAME_RATE, SAMPLE_RATE, SAMPLES_PER_FRAME
from ..checks import number
from ..errors import CsmError
from ..output.audiofile import AudioFileWriter, SampleFormat, numbered_path
from ..text.script import Passage, parse_line, split_utterances
from .ending import window_words
from .generator import MAX_SEED, MAX_SPEAKER, Settings, StreamingGenerator
from .prompt import Segment
from .scheduler import Owner

PACK_WORDS = 20  # short sentences handed over together are spoken as one utterance of at most this many words
MAX_PAUSE_SECONDS = 60.0


@dataclass(frozen=True)
class Utterance:
    """What one generation says: `line` is the input line it comes from (1-based) and `part` its place among that
    line's utterances (1-based)."""

    speaker: int
    text: str
    line: int = 1
    part: int = 1


def utterances(passages: Iterable[Passage], default_speaker: int, max_words: int,
               warn: Callable[[str], None]) -> Iterator[Utterance]:
    """Each line's speaker tag read from its first passage; the passages' sentences made utterances
    (`split_utterances`: short ones packed, one longer than `max_words` cut at clauses)."""
    speaker, part = default_speaker, 0
    for passage in passages:
        text = passage.text
        if passage.first:
            line = parse_line(text, default_speaker, MAX_SPEAKER)
            if line.warning:
                warn(line.warning)
            speaker, text, part = line.speaker, line.text, 0
        for piece in pieces(text, max_words):
            part += 1
            yield Utterance(speaker, piece, passage.line, part)


def pieces(text: str, max_words: int) -> list[str]:
    """A line's text as the utterances it is spoken in: its sentences, short ones packed, one longer than
    `max_words` cut at clauses."""
    return split_utterances(text, max_words, min(PACK_WORDS, max_words))


@dataclass
class SpokenLine:
    """When one utterance was generated (monotonic seconds), where its samples lie in the output (its first frame's
    first sample, past the pause leading it, and the end of its last), and what it gives the history."""

    index: int
    speaker: int
    text: str
    generation_started: float
    first_chunk: float | None = None
    generation_ended: float | None = None  # None: cut short
    start_sample: int = 0
    end_sample: int = 0
    segment: Segment | None = None  # its text and the codes of its frames yielded; None: none were

    def to_dict(self, origin: float) -> dict[str, Any]:
        """Times in seconds since `origin`; where the line's audio lies, in seconds into the output."""

        def since(moment: float | None) -> float | None:
            return None if moment is None else round(moment - origin, 4)

        return {
            "index": self.index, "speaker": self.speaker, "text": self.text,
            "generation_started_s": since(self.generation_started), "first_chunk_s": since(self.first_chunk),
            "generation_ended_s": since(self.generation_ended),
            "audio_start_s": self.start_sample / SAMPLE_RATE, "audio_end_s": self.end_sample / SAMPLE_RATE,
        }


def pause_frames(seconds: float) -> int:
    """The silence between utterances, `--pause` seconds, in whole frames."""
    return round(number("--pause", seconds, 0, MAX_PAUSE_SECONDS, " seconds") * FRAME_RATE)


class Conversation:
    def __init__(self, generator: StreamingGenerator, settings: Settings, prompts: Sequence[Segment] = (),
                 memory: bool = True, pause_seconds: float = 0.2, out_dir: Path | None = None,
                 sample_format: SampleFormat = "s16", history: deque[Segment] | None = None,
                 owner: Owner | None = None) -> None:
        """`history`: the utterances of an earlier conversation, continued here (and changed in place); None: none.
        `owner`: who may close the utterance being spoken at once (`StreamingGenerator.close_owned`)."""
        self.generator = generator
        self.owner = owner
        self.settings = settings
        self.prompts = [generator.encode_segment(prompt) for prompt in prompts]
        self.memory = memory
        self.history: deque[Segment] = deque() if history is None else history
        self.pause = np.zeros(pause_frames(pause_seconds) * SAMPLES_PER_FRAME, dtype=np.float32)
        self.out_dir = out_dir
        self.sample_format: SampleFormat = sample_format
        self.lines: list[SpokenLine] = []
        self.samples = 0
        self.max_words = window_words(generator.model.max_seq_len)  # of one utterance
        self._file: AudioFileWriter | None = None  # the current utterance's, in `out_dir`
        self._closed = False

    def script(self, text: str, speaker: int) -> list[Utterance]:
        """A text as one line of `speaker` is spoken (`pieces`)."""
        return [Utterance(speaker, piece) for piece in pieces(text, self.max_words)]

    def context_for(self, utterance: Utterance) -> list[Segment]:
        """Voice prompts, then as many of the latest utterances as fit with `utterance` and its frame budget."""
        rows = self.generator.segment_rows
        window = self.generator.model.max_seq_len
        text_rows = rows(Segment(utterance.speaker, utterance.text))
        budget = window - text_rows - self.settings.max_frames
        if budget < 0:
            raise CsmError(
                f"the text takes {text_rows} of the model's {window} positions, leaving room for "
                f"{max(window - text_rows, 0) / FRAME_RATE:.1f} seconds of speech but --max-seconds is "
                f"{self.settings.max_seconds:g}: lower --max-seconds"
            )
        prompt_rows = sum(rows(prompt) for prompt in self.prompts)
        if prompt_rows > budget:
            raise CsmError(
                f"the voice prompts take {prompt_rows} of the model's {self.generator.model.max_seq_len} positions "
                f"and only {max(budget, 0)} are left beside the text and --max-seconds "
                f"{self.settings.max_seconds:g}: cut at least {(prompt_rows - budget) / FRAME_RATE:.1f} s of prompt "
                "audio, or lower --max-seconds"
            )
        history_rows = sum(rows(segment) for segment in self.history)
        while self.history and prompt_rows + history_rows > budget:
            history_rows -= rows(self.history.popleft())
        return [*self.prompts, *self.history]

    def speak(self, script: Iterable[Utterance], pause_first: bool = True) -> Iterator[np.ndarray]:
        """Chunks of every utterance in turn. The pause between utterances (whole frames) leads the first chunk of
        the next one, so that no silence is sent before the next utterance has audio; pause_first=False: none leads
        the first (a turn that starts at once)."""
        for i, utterance in enumerate(script):
            yield from self.speak_one(utterance, pause=pause_first or i > 0)
            if self.lines[-1].generation_ended is None:  # its speech was closed by its owner: the rest is not said
                return

    def speak_one(self, utterance: Utterance, pause: bool = True) -> Iterator[np.ndarray]:
        """Chunks of the next utterance, led by the pause unless it is the first (or `pause` is False)."""
        index = len(self.lines)
        return self._speak_one(index, utterance, self.pause if index and pause else self.pause[:0])

    def _speak_one(self, index: int, utterance: Utterance, lead_in: np.ndarray) -> Iterator[np.ndarray]:
        line = SpokenLine(index, utterance.speaker, utterance.text, time.monotonic(), start_sample=self.samples,
                          end_sample=self.samples)
        self.lines.append(line)
        seed = None if self.settings.seed is None else (self.settings.seed + index) % (MAX_SEED + 1)
        speech = self.generator.stream(
            utterance.text, speaker=utterance.speaker, context=self.context_for(utterance),
            temperature=self.settings.temperature, topk=self.settings.topk, seed=seed,
            max_seconds=self.settings.max_seconds, chunk_frames=self.settings.chunk_frames, voices=len(self.prompts),
            owner=self.owner,
        )
        wav = None
        if self.out_dir and not self._closed:
            wav = AudioFileWriter(numbered_path(self.out_dir, utterance.line, utterance.part), self.sample_format)
            self._file = wav
        try:
            for chunk in speech:
                if wav:
                    wav.write(chunk)
                if line.first_chunk is None:
                    line.first_chunk = time.monotonic()
                    line.start_sample = self.samples + len(lead_in)
                    chunk = np.concatenate([lead_in, chunk])
                self.samples += len(chunk)
                line.end_sample = self.samples
                yield chunk
        finally:
            speech.close()
            if wav:
                wav.close()
            if line.first_chunk is not None:
                line.segment = Segment(utterance.speaker, utterance.text, codes=speech.codes)
        if speech.cut:  # closed by its owner (`StreamingGenerator.close_owned`): cut short, not said whole
            return
        line.generation_ended = time.monotonic()
        if self.memory and line.segment is not None:
            self.history.append(line.segment)

    def keep_heard(self, lines: Sequence[SpokenLine], heard_until: int) -> None:
        """The listener heard `lines` (one after another; the last may have been cut short) only up to sample
        `heard_until` of this conversation's audio (`samples` counts it): the history keeps each line's frames heard
        and forgets the rest, so that the next utterance follows what was heard (a line cut short joins it with its
        frames heard). On the thread that speaks, between two utterances."""
        for line in lines:
            if line.segment is None:
                continue
            frames = min(max(heard_until - line.start_sample, 0) // SAMPLES_PER_FRAME, line.segment.codes.shape[1])
            heard = replace(line.segment, codes=line.segment.codes[:, :frames]) if frames else None
            kept = next((i for i, segment in enumerate(self.history) if segment is line.segment), None)
            if kept is not None:
                if heard is None:
                    del self.history[kept]
                else:
                    self.history[kept] = heard
            elif heard is not None and self.memory and line.generation_ended is None:
                self.history.append(heard)
            line.segment = heard

    def close(self) -> None:
        """Closes the current utterance's file from any thread (the run ends: its generation may go on a moment in
        another thread, whose chunks are then dropped), and opens no other."""
        self._closed = True
        if self._file is not None:
            self._file.close()
