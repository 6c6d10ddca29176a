"""Utterances from lines, conversation memory and its trimming at the window, pauses and per-line files."""

import numpy as np
import pytest
import soundfile as sf

from csm_cli.audio import SAMPLES_PER_FRAME, seconds_to_frames
from csm_cli.errors import CsmError
from csm_cli.generation.conversation import PACK_WORDS, Conversation, Utterance, utterances
from csm_cli.generation.generator import Settings, StreamingGenerator
from csm_cli.generation.prompt import Segment
from csm_cli.text.script import passages

SHORT = Settings(seed=5, max_seconds=0.4)


def test_lines_become_utterances_with_speakers_lines_parts_and_warnings():
    warnings: list[str] = []
    text = "1: Hello there. How are you?\n\nS2: hi\n0: Fine. " + ", ".join(f"W{i}" for i in range(7)) + ".\nBye."
    script = list(utterances(passages([text]), default_speaker=3, max_words=3, warn=warnings.append))
    assert script[:3] == [Utterance(1, "Hello there.", 1, 1), Utterance(1, "How are you?", 1, 2),
                          Utterance(3, "S2: hi", 3, 1)]
    assert len(warnings) == 1 and "'S2:' is not a speaker tag" in warnings[0]
    long_line = script[3:-1]
    assert [(u.speaker, u.line, u.part) for u in long_line] == [(0, 4, part) for part in range(1, 5)]
    assert long_line[0].text == "Fine."
    assert " ".join(u.text for u in long_line[1:]).split() == [f"W{i}," for i in range(6)] + ["W6."]
    assert all(len(u.text.split()) <= 3 for u in long_line)
    assert script[-1] == Utterance(3, "Bye.", 5, 1)


def test_short_sentences_are_packed_and_a_sentence_is_cut_only_past_the_window():
    sentences = ["One.", "Two three.", "Four five six.", "Seven."]
    packed = [u.text for u in utterances(passages([" ".join(sentences) + "\n"]), 0, max_words=200, warn=print)]
    assert packed == [" ".join(sentences)]
    long_sentence = "Hello " + "very " * (PACK_WORDS + 5) + "long sentence."
    assert [u.text for u in utterances(passages([long_sentence]), 0, max_words=200, warn=print)] == [long_sentence]


def test_segment_rows_count_what_the_prompt_holds(generator):
    segments = [Segment(1, "Hi there.", codes=np.zeros((32, 7), dtype=int)),
                Segment(0, "Fine.", audio=np.ones(3 * SAMPLES_PER_FRAME + 5, dtype=np.float32) * 0.1),
                Segment(2, "No audio.")]
    tokens, _ = generator.prompt_rows("Next.", 0, segments)
    assert len(tokens) == sum(map(generator.segment_rows, segments)) + generator.segment_rows(Segment(0, "Next."))


def test_each_spoken_line_joins_the_context_of_the_next(generator):
    conversation = Conversation(generator, SHORT)
    chunks = list(conversation.speak([Utterance(0, "Hello there."), Utterance(1, "How are you?")]))
    assert [(s.speaker, s.text) for s in conversation.history] == [(0, "Hello there."), (1, "How are you?")]
    first, second = conversation.history
    spoken = [conversation.lines[i] for i in (0, 1)]
    assert first.codes.shape[1] * SAMPLES_PER_FRAME == spoken[0].end_sample - spoken[0].start_sample
    audio = np.concatenate(chunks)
    assert len(audio) == conversation.samples == spoken[1].end_sample
    pause = spoken[1].start_sample - spoken[0].end_sample
    assert pause == 2 * SAMPLES_PER_FRAME and not audio[spoken[0].end_sample : spoken[1].start_sample].any()
    assert conversation.context_for(Utterance(0, "Next.")) == [first, second]


def test_the_history_keeps_only_the_frames_heard(generator):
    """A line cut short adds nothing by itself; told what the listener heard, the history keeps each line's frames
    heard, in their place (a line cut short joining it at the end), and forgets a line heard not at all."""
    conversation = Conversation(generator, SHORT)
    list(conversation.speak([Utterance(0, "Hello there.")]))
    cut = conversation.speak([Utterance(1, "How are you?")])
    next(cut), next(cut)  # the pause and a frame, then a frame
    cut.close()
    first, second = conversation.lines
    assert second.generation_ended is None and second.segment.codes.shape[1] == 2
    assert [s.text for s in conversation.history] == ["Hello there."]
    whole = first.segment.codes
    conversation.keep_heard([second], second.start_sample + SAMPLES_PER_FRAME + 100)
    conversation.keep_heard([first], first.start_sample + 2 * SAMPLES_PER_FRAME)
    assert [s.text for s in conversation.history] == ["Hello there.", "How are you?"]
    np.testing.assert_array_equal(conversation.history[0].codes, whole[:, :2])
    np.testing.assert_array_equal(conversation.history[1].codes, second.segment.codes[:, :1])
    conversation.keep_heard([first], first.start_sample + SAMPLES_PER_FRAME - 1)
    assert [s.text for s in conversation.history] == ["How are you?"]


def test_no_memory_keeps_only_the_voice_prompts(generator):
    prompt = Segment(1, "Hi.", codes=np.ones((32, 4), dtype=int))
    conversation = Conversation(generator, SHORT, prompts=[prompt], memory=False)
    list(conversation.speak([Utterance(0, "Hello there."), Utterance(1, "Bye.")]))
    assert not conversation.history
    assert conversation.context_for(Utterance(0, "Next.")) == [prompt]


def test_the_oldest_segments_are_dropped_whole_exactly_at_the_window(generator):
    settings = Settings(max_seconds=4.0)
    prompt = Segment(1, "Voice.", codes=np.ones((32, 100), dtype=int))
    conversation = Conversation(generator, settings, prompts=[prompt])
    history = [Segment(i % 2, f"Line {i}.", codes=np.full((32, 300 + i), i, dtype=int)) for i in range(8)]
    conversation.history.extend(history)
    utterance = Utterance(0, "And now?")
    context = conversation.context_for(utterance)

    def used(segments) -> int:
        return len(generator.prompt_rows(utterance.text, utterance.speaker, segments)[0]) + seconds_to_frames(4.0)

    kept = context[1:]
    assert context[0] is prompt and kept == history[-len(kept):] and 0 < len(kept) < len(history)
    assert used(context) <= generator.model.max_seq_len
    assert used([prompt, history[-len(kept) - 1], *kept]) > generator.model.max_seq_len
    assert list(conversation.history) == kept


def test_voice_prompts_longer_than_the_window_say_how_much_to_cut(generator):
    prompt = Segment(1, "Voice.", codes=np.ones((32, 2100), dtype=int))
    conversation = Conversation(generator, Settings(max_seconds=2.0), prompts=[prompt])
    utterance = Utterance(0, "Hi.")
    free = generator.model.max_seq_len - generator.segment_rows(Segment(0, "Hi.")) - seconds_to_frames(2.0)
    excess_seconds = (generator.segment_rows(prompt) - free) / 12.5
    with pytest.raises(CsmError, match=rf"cut at least {excess_seconds:.1f} s of prompt audio, or lower --max"):
        conversation.context_for(utterance)


def test_out_dir_gets_one_numbered_wav_per_utterance(generator, tmp_path):
    conversation = Conversation(generator, SHORT, out_dir=tmp_path)
    list(conversation.speak([Utterance(0, "One.", 1, 1), Utterance(1, "Two.", 1, 2), Utterance(0, "Three.", 3, 1)]))
    names = ["0001-1.wav", "0001-2.wav", "0003-1.wav"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for line in conversation.lines:
        frames = sf.info(str(tmp_path / names[line.index])).frames
        assert frames == line.end_sample - line.start_sample


class PrefilledRows:
    """The (first position, row count) of each prefill the backbone runs, seen through a forward hook."""

    def __init__(self, generator) -> None:
        self.calls: list[tuple[int, int]] = []
        self._hook = generator.model.backbone.register_forward_pre_hook(self._seen)

    def _seen(self, module, args) -> None:
        h, positions = args[:2]
        if h.shape[1] > 1:
            self.calls.append((int(positions[0]), h.shape[1]))

    def remove(self) -> None:
        self._hook.remove()


def converse(generator, reuse_prefix: bool, prompt: Segment, lines: int) -> tuple[list[np.ndarray], PrefilledRows]:
    """A greedy float32 conversation of `lines` lines after `prompt`, each prompt prefilled whole or from its first
    row not cached; the codes of each line and the prefills seen."""
    speaker = StreamingGenerator(generator.model, generator.tokenizer, generator.codec, fast=False)
    speaker.reuse_prefix = reuse_prefix
    conversation = Conversation(speaker, Settings(topk=1, seed=3, max_seconds=0.4), prompts=[prompt])
    prefills = PrefilledRows(generator)
    try:
        for utterance in (Utterance(i % 2, f"Line number {i}.") for i in range(lines)):
            list(conversation.speak([utterance]))
    finally:
        prefills.remove()
        speaker.close()
    codes = [line.codes for line in conversation.history]
    if len(codes) < lines:  # the oldest were trimmed: what is left is the last ones
        codes = [None] * (lines - len(codes)) + codes
    return codes, prefills


def test_later_lines_prefill_only_their_new_rows_and_say_what_a_whole_prefill_says(generator):
    prompt = Segment(1, "Voice.", codes=np.random.default_rng(0).integers(0, 2048, (32, 40)))
    whole, whole_prefills = converse(generator, False, prompt, 3)
    reused, prefills = converse(generator, True, prompt, 3)
    for got, want in zip(reused, whole, strict=True):
        np.testing.assert_array_equal(got, want)
    voice = generator.segment_rows(prompt)  # each prompt's voice rows are a pass of their own, then the rest
    assert whole_prefills.calls[::2] == [(0, voice)] * 3
    assert {start for start, _ in whole_prefills.calls[1::2]} == {voice}
    assert prefills.calls[:2] == whole_prefills.calls[:2]
    for (start, count), (_, whole_count) in zip(prefills.calls[2:], whole_prefills.calls[3::2], strict=True):
        text_rows = generator.segment_rows(Segment(0, "Line number 1."))
        assert start + count == voice + whole_count and count <= text_rows + 2  # end-of-audio row, text, a frame


def test_a_trimmed_history_keeps_the_voice_prompt_cached(generator):
    prompt = Segment(1, "Voice.", codes=np.random.default_rng(1).integers(0, 2048, (32, 1950)))
    whole, _ = converse(generator, False, prompt, 5)
    reused, prefills = converse(generator, True, prompt, 5)
    for got, want in zip(reused[-2:], whole[-2:], strict=True):
        np.testing.assert_array_equal(got, want)
    prompt_rows = generator.segment_rows(prompt)
    line_rows = generator.segment_rows(Segment(0, "Line number 0."))
    starts = [start for start, _ in prefills.calls]
    # a line whose history was trimmed: prefilled from within what followed the voice prompt, which stayed cached
    # (a line's first text rows, BOS and speaker tag, may match the dropped line's)
    assert any(prompt_rows <= start < prompt_rows + line_rows for start in starts[2:]), (prompt_rows, starts)
    assert any(start > prompt_rows + line_rows for start in starts[1:]), (prompt_rows, starts)
