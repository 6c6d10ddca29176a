"""When an utterance ends: a frame budget that follows its text, and the end-of-speech rule on decoded frames.

CSM ends an utterance with an all-zero frame, but sometimes never does and runs on into silence or babble. So:
- Budget: an utterance gets `BUDGET_FLOOR_SECONDS` plus `BUDGET_SECONDS_PER_WORD` per word of its text (a CJK
  character counts as a word), never more than `--max-seconds`, the hard cap.
- Silence: a frame is near-silent when its RMS is below `SILENCE_DBFS`. Until the first frame of speech, silent
  frames pass at once, so first audio is not delayed and leading silence never ends anything. After it, silent
  frames are held back: a frame of speech that follows releases them, so a pause inside speech is played whole;
  `END_SILENCE_SECONDS` of silence in a row ends the utterance. When an utterance ends (that way, by the end frame
  or by the budget), at most `TAIL_SECONDS` of held silence is played, as a natural tail.
Frames of speech are never dropped: only near-silent frames after the last frame of speech are.
"""

import re
from collections.abc import Generator, Iterator
from contextlib import closing
from typing import TypeVar

import numpy as np

from ..audio import FRAME_RATE, seconds_to_frames

BUDGET_FLOOR_SECONDS = 2.0
BUDGET_SECONDS_PER_WORD = 0.8  # about three times the time most speakers take
SILENCE_DBFS = -45.0
END_SILENCE_SECONDS = 1.2
TAIL_SECONDS = 0.24
# Llama 3's tokenizer averages about 1.3 tokens per English word; for the window, count more.
TEXT_TOKENS_PER_WORD = 2

_SILENCE_RMS = 10 ** (SILENCE_DBFS / 20)
_END_SILENCE_FRAMES = seconds_to_frames(END_SILENCE_SECONDS)
_TAIL_FRAMES = seconds_to_frames(TAIL_SECONDS)
_CJK_CHARACTER = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

Codes = TypeVar("Codes")


def spoken_words(text: str) -> int:
    """Words as speech counts them: runs of non-space characters, plus each CJK character."""
    return len(text.split()) + len(_CJK_CHARACTER.findall(text))


def frame_budget(text: str, max_frames: int) -> int:
    """The frames an utterance of `text` may take: the floor plus the per-word allowance, at most `max_frames`."""
    seconds = BUDGET_FLOOR_SECONDS + BUDGET_SECONDS_PER_WORD * spoken_words(text)
    return max(1, min(max_frames, seconds_to_frames(seconds)))


def window_words(max_seq_len: int) -> int:
    """The most words of one utterance whose text and frame budget fit the model's window of `max_seq_len`
    positions; a longer sentence is cut at clauses."""
    per_word = BUDGET_SECONDS_PER_WORD * FRAME_RATE + TEXT_TOKENS_PER_WORD
    return max(1, int((max_seq_len - BUDGET_FLOOR_SECONDS * FRAME_RATE) // per_word))


def is_silent(samples: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < _SILENCE_RMS


def until_silence(frames: Generator[tuple[Codes, np.ndarray]]) -> Iterator[tuple[Codes, np.ndarray]]:
    """The decoded frames (codes, samples) with the end-of-speech rule applied (see the module docstring); `frames`
    is closed as soon as the rule ends the utterance."""
    held: list[tuple[Codes, np.ndarray]] = []
    spoken = False
    with closing(frames):
        for frame in frames:
            if not is_silent(frame[1]):
                spoken = True
                yield from held
                held.clear()
                yield frame
            elif not spoken:
                yield frame
            else:
                held.append(frame)
                if len(held) == _END_SILENCE_FRAMES:
                    break
    yield from held[:_TAIL_FRAMES]
