import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csm_cli.text.script import IDLE, Line, Passage, SentenceSplitter, parse_line, passages, split_utterances


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
        ("999999: the last speaker", Line(999_999, "the last speaker")),
    ],
)
def test_parse_line_reads_valid_tags_and_leaves_text_alone(line: str, expected: Line) -> None:
    assert parse_line(line, default_speaker=7, max_speaker=999_999) == expected


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
        ("1000000: hi", "1000000:"),
        ("1000000000000000000000000000000: hi", "1000000000000000000000000000000:"),
        ("\N{ARABIC-INDIC DIGIT THREE}: hi", "\N{ARABIC-INDIC DIGIT THREE}:"),
    ],
)
def test_parse_line_speaks_a_mistyped_tag_as_typed_with_a_warning(line: str, lookalike: str) -> None:
    parsed = parse_line(line, default_speaker=4, max_speaker=999_999)
    assert (parsed.speaker, parsed.text) == (4, line)
    assert parsed.warning is not None
    assert f"'{lookalike}' is not a speaker tag" in parsed.warning
    assert "speaker 4" in parsed.warning


@pytest.mark.parametrize(
    ("text", "max_words", "pack_words", "expected"),
    [
        ("  Hello,  world.\tBye.  ", 10, 10, ["Hello,  world.\tBye."]),
        ("One two. Three four. Five six.", 10, 4, ["One two. Three four.", "Five six."]),
        ("Stop! Go? Wait… Fine.", 9, 1, ["Stop!", "Go?", "Wait…", "Fine."]),
        ("Dr. Smith met Mr. Jones. They talked.", 9, 5, ["Dr. Smith met Mr. Jones.", "They talked."]),
        ("Drink e.g. tea. Then sleep, J. R. said.", 9, 5, ["Drink e.g. tea.", "Then sleep, J. R. said."]),
        ("Wait... what now? Go.", 9, 3, ["Wait... what now?", "Go."]),
        ('He said "stop." Then left.', 9, 3, ['He said "stop."', "Then left."]),
        ("Hello from the full model.", 9, 2, ["Hello from the full model."]),  # a sentence is never cut to pack
        ("a b c, d e f; g h i j. k", 4, 4, ["a b c,", "d e f;", "g h i j.", "k"]),
        ("a b, c d, e f g hi. Done.", 5, 1, ["a b, c d,", "e f g hi.", "Done."]),  # clauses packed to the window
        ("one two three four five six seven", 3, 3, ["one two three", "four five six", "seven"]),
        ("Short one. A b c d e f g", 3, 3, ["Short one.", "A b c", "d e f", "g"]),
        ("你好。我很好。谢谢！", 2, 2, ["你好。我很好。", "谢谢！"]),  # noqa: RUF001 - full-width punctuation on purpose
        ("「走。」好", 1, 1, ["「走。」", "好"]),
        (" \n ", 3, 3, []),
    ],
)
def test_split_utterances_examples(text: str, max_words: int, pack_words: int, expected: list[str]) -> None:
    assert split_utterances(text, max_words, pack_words) == expected


_LATIN_TEXT = st.text(st.sampled_from(list("ab AB1.,;:!?…\"')  \n\t")), max_size=120)
_ANY_TEXT = st.text(st.one_of(st.sampled_from(list(" .!?…,;:。！？」、\n")), st.characters()), max_size=120)  # noqa: RUF001 - full-width punctuation on purpose
_LIMITS = st.integers(1, 8).flatmap(lambda max_words: st.tuples(st.just(max_words), st.integers(1, max_words)))


@given(text=_LATIN_TEXT, limits=_LIMITS)
def test_split_utterances_keeps_every_word_in_order_within_the_limit(text: str, limits: tuple[int, int]) -> None:
    max_words, pack_words = limits
    utterances = split_utterances(text, max_words, pack_words)
    assert " ".join(utterances).split() == text.split()
    assert all(1 <= len(utterance.split()) <= max_words for utterance in utterances)
    if len(text.split()) <= pack_words:
        assert utterances == ([text.strip()] if text.strip() else [])


@given(text=_ANY_TEXT, limits=_LIMITS)
def test_split_utterances_returns_slices_of_the_text_in_order(text: str, limits: tuple[int, int]) -> None:
    max_words, pack_words = limits
    utterances = split_utterances(text, max_words, pack_words)
    position = 0
    for utterance in utterances:
        assert utterance
        assert utterance == utterance.strip()
        start = text.index(utterance, position)
        assert not text[position:start].strip()
        assert len(utterance.split()) <= max_words
        position = start + len(utterance)
    assert not text[position:].strip()


def test_sentences_are_handed_over_as_soon_as_they_are_complete() -> None:
    splitter = SentenceSplitter()
    assert splitter.feed("First sentence. Sec") == ["First sentence."]
    assert splitter.feed("ond one!") == []  # a closing quote may still follow
    assert splitter.feed(" And a third, said Dr.") == ["Second one!"]
    assert splitter.pending == "And a third, said Dr."
    assert splitter.feed(" Smith. ") == []  # 'Dr.' is an abbreviation; 'Smith.' waits for the next word
    assert splitter.feed("Wait...") == ["And a third, said Dr. Smith."]
    assert splitter.feed(" what?") == []
    assert splitter.feed(" ") == ["Wait... what?"]
    assert splitter.feed("你好。") == []
    assert splitter.feed("我") == ["你好。"]
    assert splitter.flush() == ["我"]
    assert splitter.flush() == [] and splitter.pending == ""


def _sentences(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    return [sentence for delta in deltas for sentence in splitter.feed(delta)] + splitter.flush()


@given(text=_ANY_TEXT, cuts=st.lists(st.integers(0, 120), max_size=12))
def test_any_cut_into_deltas_gives_the_sentences_of_the_whole_text(text: str, cuts: list[int]) -> None:
    bounds = sorted({0, len(text), *(min(cut, len(text)) for cut in cuts)})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    sentences = _sentences(deltas)
    assert sentences == _sentences([text])
    assert " ".join(sentences).split() == text.split()
    assert all(sentence and sentence == sentence.strip() for sentence in sentences)
    assert sentences == split_utterances(text, max_words=len(text) + 1, pack_words=1)


def test_passages_follow_lines_sentences_and_quiet_spells() -> None:
    source = ["1: Hello there. How", " are you?", IDLE, "\n\n0: All", IDLE, " good,", " thanks. Bye", IDLE,
              "\n2:", IDLE, " Hi.\nlast words"]
    assert list(passages(source)) == [
        Passage(1, "1: Hello there.", first=True),
        Passage(1, "How are you?", first=False),  # the quiet spell hands over the pending sentence
        Passage(3, "0: All", first=True),
        Passage(3, "good, thanks.", first=False),
        Passage(3, "Bye", first=False),
        Passage(4, "2: Hi.", first=True),  # a bare tag waits for its text through a quiet spell
        Passage(5, "last words", first=True),
    ]
