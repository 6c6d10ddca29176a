import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_cli.script import Line, parse_line, read_lines, split_utterances


def test_read_lines_yields_a_line_before_the_next_is_written() -> None:
    read_fd, write_fd = os.pipe()
    first_taken = threading.Event()
    rest_written = threading.Event()

    def write_lines() -> None:
        with os.fdopen(write_fd, "w") as pipe:
            pipe.write("first\n")
            pipe.flush()
            first_taken.wait(timeout=10)
            pipe.write("  \n\n  second line \r\nthird")
            rest_written.set()

    writer = threading.Thread(target=write_lines)
    writer.start()
    with os.fdopen(read_fd) as pipe:
        lines = read_lines(pipe)
        assert next(lines) == "first"
        assert not rest_written.is_set()
        first_taken.set()
        assert list(lines) == ["second line", "third"]
    writer.join()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("hello there", Line(7, "hello there")),
        ("0: Hello there.", Line(0, "Hello there.")),
        ("  12 :   spaced out  ", Line(12, "spaced out")),
        ("003: leading zeros", Line(3, "leading zeros")),
        ("0: 2024: a good year", Line(0, "2024: a good year")),
        ("Note: this is text", Line(7, "Note: this is text")),
        ("10:30 is fine", Line(7, "10:30 is fine")),
        ("3:1 odds", Line(7, "3:1 odds")),
        ("Room 101: meeting", Line(7, "Room 101: meeting")),
    ],
)
def test_parse_line_reads_valid_tags_and_leaves_text_alone(line: str, expected: Line) -> None:
    assert parse_line(line, default_speaker=7) == expected


@pytest.mark.parametrize(
    ("line", "lookalike"),
    [
        ("-1: hi", "-1:"),
        ("1.5: hi", "1.5:"),
        ("S1: hi", "S1:"),
        ("Speaker 2: hi", "Speaker 2:"),
        ("[1]: hi", "[1]:"),
        ("2:hi", "2:"),
        ("3:", "3:"),
    ],
)
def test_parse_line_speaks_a_mistyped_tag_as_typed_with_a_warning(line: str, lookalike: str) -> None:
    parsed = parse_line(line, default_speaker=4)
    assert (parsed.speaker, parsed.text) == (4, line)
    assert parsed.warning is not None
    assert f"'{lookalike}' is not a speaker tag" in parsed.warning
    assert "speaker 4" in parsed.warning


@pytest.mark.parametrize(
    ("text", "max_words", "expected"),
    [
        ("  Hello,  world.\tBye.  ", 10, ["Hello,  world.\tBye."]),
        ("One two. Three four. Five six.", 4, ["One two. Three four.", "Five six."]),
        ("Stop! Go? Wait… Fine.", 1, ["Stop!", "Go?", "Wait…", "Fine."]),
        ("Dr. Smith met Mr. Jones. They talked.", 5, ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("Drink e.g. tea. Then sleep, J. R. said.", 5, ["Drink e.g. tea.", "Then sleep, J. R. said."]),
        ("Wait... what now? Go.", 3, ["Wait... what now?", "Go."]),
        ('He said "stop." Then left.', 3, ['He said "stop."', "Then left."]),
        ("a b c, d e f; g h i j. k", 4, ["a b c,", "d e f;", "g h i j.", "k"]),
        ("one two three four five six seven", 3, ["one two three", "four five six", "seven"]),
        ("Short one. A b c d e f g", 3, ["Short one.", "A b c", "d e f", "g"]),
        ("你好。我很好。谢谢！", 2, ["你好。我很好。", "谢谢！"]),  # noqa: RUF001 - full-width punctuation on purpose
        ("「走。」好", 1, ["「走。」", "好"]),
        (" \n ", 3, []),
    ],
)
def test_split_utterances_examples(text: str, max_words: int, expected: list[str]) -> None:
    assert split_utterances(text, max_words) == expected


_LATIN_TEXT = st.text(st.sampled_from(list("ab AB1.,;:!?…\"')  \n\t")), max_size=120)
_ANY_TEXT = st.text(st.one_of(st.sampled_from(list(" .!?…,;:。！？」、\n")), st.characters()), max_size=120)  # noqa: RUF001 - full-width punctuation on purpose


@given(text=_LATIN_TEXT, max_words=st.integers(1, 8))
def test_split_utterances_keeps_every_word_in_order_within_the_limit(text: str, max_words: int) -> None:
    utterances = split_utterances(text, max_words)
    assert " ".join(utterances).split() == text.split()
    assert all(1 <= len(utterance.split()) <= max_words for utterance in utterances)
    if len(text.split()) <= max_words:
        assert utterances == ([text.strip()] if text.strip() else [])


@given(text=_ANY_TEXT, max_words=st.integers(1, 8))
def test_split_utterances_returns_slices_of_the_text_in_order(text: str, max_words: int) -> None:
    utterances = split_utterances(text, max_words)
    position = 0
    for utterance in utterances:
        assert utterance
        assert utterance == utterance.strip()
        start = text.index(utterance, position)
        assert not text[position:start].strip()
        assert len(utterance.split()) <= max_words
        position = start + len(utterance)
    assert not text[position:].strip()
