"""When an utterance ends: its frame budget, and the end-of-speech rule on synthetic frames and through the
generator."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from speech_end import silence_frames

from csm_cli.audio import SAMPLES_PER_FRAME, seconds_to_frames
from csm_cli.generation.ending import (
    BUDGET_FLOOR_SECONDS,
    BUDGET_SECONDS_PER_WORD,
    END_SILENCE_SECONDS,
    SILENCE_DBFS,
    TAIL_SECONDS,
    SilenceRule,
    frame_budget,
    window_words,
)

END_SILENCE = seconds_to_frames(END_SILENCE_SECONDS)
TAIL = seconds_to_frames(TAIL_SECONDS)
QUIET_SPEECH_RMS = 10 ** ((SILENCE_DBFS + 1) / 20)  # just above the silence threshold


def frame(n: int, loud: bool) -> tuple[int, np.ndarray]:
    """Frame n: a sine at 0.3 or the near-silence of a codec's noise floor."""
    t = np.arange(SAMPLES_PER_FRAME) / SAMPLES_PER_FRAME
    level = 0.3 if loud else 10 ** ((SILENCE_DBFS - 10) / 20)
    return n, (level * np.sqrt(2) * np.sin(2 * np.pi * 10 * t)).astype(np.float32)


def kept(pattern: str, frames: list[tuple[int, np.ndarray]] | None = None) -> tuple[list[int], int]:
    """The frames of a pattern of speech (1) and silence (0) that the rule plays, and how many it took before it
    ended the utterance."""
    rule: SilenceRule[tuple[int, np.ndarray]] = SilenceRule()
    played, taken = [], 0
    for numbered in frames or [frame(n, flag == "1") for n, flag in enumerate(pattern)]:
        taken += 1
        played += [n for n, _ in rule.push(numbered, numbered[1])]
        if rule.ended:
            break
    return played + [n for n, _ in rule.tail()], taken


def test_a_tail_of_silence_ends_the_utterance_keeping_a_short_tail():
    got, taken = kept("1" * 5 + "0" * 40)
    assert got == list(range(5 + TAIL))
    assert taken == 5 + END_SILENCE


def test_silence_before_speech_passes_at_once_and_ends_nothing():
    rule: SilenceRule[tuple[int, np.ndarray]] = SilenceRule()
    first = frame(0, False)
    assert rule.push(first, first[1]) == [first]  # first audio is not held back
    got, _ = kept("0" * (END_SILENCE + 5) + "111")
    assert got == list(range(END_SILENCE + 8))


def test_a_pause_inside_speech_is_played_whole_once_speech_resumes():
    pattern = "111" + "0" * (END_SILENCE - 1) + "11"
    got, _ = kept(pattern)
    assert got == list(range(len(pattern)))


def test_the_last_frames_of_speech_are_never_dropped():
    quiet = [(0, frame(0, True)[1]), (1, frame(1, False)[1]),
             (2, (frame(2, True)[1] / 0.3 * QUIET_SPEECH_RMS).astype(np.float32)), (3, frame(3, False)[1])]
    assert kept("", quiet)[0] == [0, 1, 2, 3]


@given(st.text(st.sampled_from("01"), max_size=80))
def test_every_frame_of_speech_before_the_end_is_kept_in_order(pattern: str):
    got, _ = kept(pattern)
    assert got == list(range(len(got)))
    last_speech = pattern.rfind("1")
    end = pattern.find("0" * END_SILENCE, pattern.find("1"))  # the first long silence after speech starts
    if last_speech < 0:
        assert len(got) == len(pattern)
    elif end >= 0:
        assert len(got) == end + TAIL
    else:
        assert len(got) == last_speech + 1 + min(TAIL, len(pattern) - last_speech - 1)


def test_the_frame_budget_follows_the_text_and_max_seconds_caps_it():
    one_word = seconds_to_frames(BUDGET_FLOOR_SECONDS + BUDGET_SECONDS_PER_WORD)
    assert frame_budget("Hello.", 375) == one_word
    assert frame_budget("Hello there, how are you?", 375) == seconds_to_frames(
        BUDGET_FLOOR_SECONDS + 5 * BUDGET_SECONDS_PER_WORD)
    assert frame_budget("你好。", 375) == seconds_to_frames(BUDGET_FLOOR_SECONDS + 3 * BUDGET_SECONDS_PER_WORD)
    assert frame_budget("word " * 1000, 375) == 375
    assert 100 < window_words(2048) < 200


TEXT = "Hello there."


def test_the_budget_caps_an_utterance_that_babbles_on(generator):
    """The tiny random model never falls silent and rarely ends: its utterance runs to the budget, not to
    --max-seconds; a lower --max-seconds is still the hard cap."""
    speech = generator.stream(TEXT, seed=1, max_seconds=30)
    list(speech)
    assert speech.codes.shape[1] == frame_budget(TEXT, seconds_to_frames(30)) < seconds_to_frames(30)
    capped = generator.stream(TEXT, seed=1, max_seconds=1.0)
    assert len(np.concatenate(list(capped))) == seconds_to_frames(1.0) * SAMPLES_PER_FRAME


# Frames counted from 1, as decoded; --max-seconds 2.4 allows 30.
SILENCES = [
    (list(range(6, 40)), 5 + TAIL, 5 + END_SILENCE),  # silence after five frames of speech
    (list(range(1, 8)) + list(range(12, 40)), 11 + TAIL, 11 + END_SILENCE),  # silence, speech, silence
    (list(range(3, 3 + END_SILENCE - 1)), 30, 30),  # a pause shorter than the end: played whole, to the cap
]


@pytest.mark.parametrize(("silent", "kept_frames", "decoded"), SILENCES)
def test_the_generator_ends_on_silence_with_codes_matching_its_audio(generator, monkeypatch, silent, kept_frames,
                                                                     decoded):
    decodes = silence_frames(monkeypatch, generator.codec, silent, 40)
    speech = generator.stream(TEXT, seed=1, max_seconds=2.4)
    audio = np.concatenate(list(speech))
    assert speech.codes.shape[1] == kept_frames and len(audio) == kept_frames * SAMPLES_PER_FRAME
    assert decodes.item() == decoded  # generation stopped when the rule ended the utterance
