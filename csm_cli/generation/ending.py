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
from typing import Generic, TypeVar

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

Frame = TypeVar("Frame")


def spoken_words(text: str) -> int:
    """Words as speech counts them: runs of non-space characters, plus each CJK character."""
    return len(text.split()) + len(_CJK_CHARACTER.findall(text))


def budget_seconds(text: str) -> float:
    """How long an utterance of `text` may take: the floor plus the per-word allowance."""
    return BUDGET_FLOOR_SECONDS + BUDGET_SECONDS_PER_WORD * spoken_words(text)


def frame_budget(text: str, max_frames: int) -> int:
    """The frames an utterance of `text` may take (`budget_seconds`), at most `max_frames`."""
    return max(1, min(max_frames, seconds_to_frames(budget_seconds(text))))


def window_words(max_seq_len: int) -> int:
    """The most words of one utterance whose text and frame budget fit the model's window of `max_seq_len`
    positions; a longer sentence is cut at clauses."""
    per_word = BUDGET_SECONDS_PER_WORD * FRAME_RATE + TEXT_TOKENS_PER_WORD
    return max(1, int((max_seq_len - BUDGET_FLOOR_SECONDS * FRAME_RATE) // per_word))


def is_silent(samples: np.ndarray) -> bool:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < _SILENCE_RMS


class SilenceRule(Generic[Frame]):
    """The end-of-speech rule on one stream's decoded frames (see the module docstring), a frame at a time."""

    def __init__(self) -> None:
        self._held: list[Frame] = []
        self._spoken = False
        self.ended = False  # a stretch of silence has ended the utterance

    def push(self, frame: Frame, samples: np.ndarray) -> list[Frame]:
        """The next frame and its samples -> the frames to play now (none while silence is held back)."""
        if not is_silent(samples):
            self._spoken = True
            released, self._held = [*self._held, frame], []
            return released
        if not self._spoken:
            return [frame]
        self._held.append(frame)
        self.ended = len(self._held) == _END_SILENCE_FRAMES
        return []

    def tail(self) -> list[Frame]:
        """When the utterance ends: the held silence played as its tail."""
        return self._held[:_TAIL_FRAMES]
