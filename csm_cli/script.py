"""Text to speak: lines read as they arrive, their speaker tags, and utterances of bounded length.

Speaker tags
------------
A line may start with a speaker tag: a whole number (0 or more), a colon and at least one space::

    0: Hello there.
    1 : Hi!

Lines without a tag are spoken by the default speaker (``--speaker``). Only the first tag of a line
counts, so ``0: 2024: a good year`` says "2024: a good year" as speaker 0; tag a line explicitly to
speak text that itself starts like a tag.

A line that starts like a mistyped tag (``-1: hi``, ``1.5: hi``, ``S1: hi``, ``Speaker 1: hi``,
``[1]: hi``, ``2:hi`` with no space, or a bare ``3:``) is spoken whole, as typed, by the default
speaker, with a warning. Text such as ``Note: this``, ``10:30 is fine`` or ``3:1 odds`` is ordinary
text: no tag, no warning, nothing changed.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

_TAG = re.compile(r"(?P<speaker>\d+)\s*:\s+(?P<text>.+)", re.DOTALL)
_TAG_LOOKALIKE = re.compile(r"[\[(]?(?:speaker|spk|s)?\s*[-+]?\d+(?:\.\d+)?[\])]?\s*:(?!\d)", re.IGNORECASE)

_CLOSERS = (
    "\"')\\]»\N{RIGHT DOUBLE QUOTATION MARK}\N{RIGHT SINGLE QUOTATION MARK}\N{FULLWIDTH RIGHT PARENTHESIS}"
    "\N{RIGHT CORNER BRACKET}\N{RIGHT WHITE CORNER BRACKET}"
)
_CJK_STOPS = "\N{IDEOGRAPHIC FULL STOP}\N{FULLWIDTH EXCLAMATION MARK}\N{FULLWIDTH QUESTION MARK}"
_CJK_CLAUSE_MARKS = "\N{FULLWIDTH COMMA}\N{FULLWIDTH SEMICOLON}\N{FULLWIDTH COLON}\N{IDEOGRAPHIC COMMA}"
# A word is a run of non-space characters; in unspaced CJK text a full stop also ends one.
_WORD = re.compile(rf"[^\s{_CJK_STOPS}]*[{_CJK_STOPS}]+[{_CLOSERS}]*|\S+")
_SENTENCE_END = re.compile(rf"[.!?…{_CJK_STOPS}][{_CLOSERS}]*$")
_CLAUSE_END = re.compile(rf"[,;:{_CJK_CLAUSE_MARKS}][{_CLOSERS}]*$")
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+")  # J.  U.S.  e.g.
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "prof.", "sr.", "jr.", "st.", "vs."})


@dataclass(frozen=True)
class Line:
    """One line of input: who speaks it, what is said, and what the user should be told about it."""

    speaker: int
    text: str
    warning: str | None = None


def read_lines(stream: TextIO) -> Iterator[str]:
    """Yields each non-blank line as soon as it arrives (not at end of input), without surrounding whitespace."""
    for line in iter(stream.readline, ""):
        if stripped := line.strip():
            yield stripped


def parse_line(line: str, default_speaker: int) -> Line:
    """Reads the optional speaker tag of a line (see the module docstring); never drops any text."""
    assert default_speaker >= 0, default_speaker
    line = line.strip()
    if tag := _TAG.fullmatch(line):
        return Line(int(tag["speaker"]), tag["text"])
    if lookalike := _TAG_LOOKALIKE.match(line):
        warning = (
            f"'{lookalike[0]}' is not a speaker tag (write 'N: text' with N a whole number, e.g. '1: hello'); "
            f"the line is spoken as typed by speaker {default_speaker}"
        )
        return Line(default_speaker, line, warning)
    return Line(default_speaker, line)


def split_utterances(text: str, max_words: int) -> list[str]:
    """Cuts text into utterances of at most max_words words, at sentence ends where it can.

    Whole sentences are packed together while they fit; a longer sentence is cut at clause punctuation
    (, ; :) and, failing that, between words. Each utterance is a slice of the text, so joining them with
    spaces gives back the same words in the same order. Text that fits is returned whole (stripped);
    blank text gives no utterance. Words are runs of non-space characters; in unspaced CJK text a full stop
    also ends one, so that such text can be cut after it.
    """
    assert max_words >= 1, max_words
    spans = [word.span() for word in _WORD.finditer(text)]
    words = [text[start:end] for start, end in spans]

    def ends_sentence(i: int) -> bool:
        return _ends_sentence(words[i], words[i + 1] if i + 1 < len(words) else None)

    def ends_clause(i: int) -> bool:
        return _CLAUSE_END.search(words[i]) is not None

    pieces = [
        chunk
        for sentence in _cut_after(range(len(words)), ends_sentence)
        for clause in ([sentence] if len(sentence) <= max_words else _cut_after(sentence, ends_clause))
        for chunk in _chunks(clause, max_words)
    ]
    return [text[spans[group.start][0] : spans[group.stop - 1][1]] for group in _pack(pieces, max_words)]


def _ends_sentence(word: str, next_word: str | None) -> bool:
    """Whether a sentence ends after word; a final '.' may instead end an abbreviation or an initial."""
    end = _SENTENCE_END.search(word)
    if end is None:
        return False
    if not end[0].startswith("."):
        return True
    abbreviation = word.lower() in _ABBREVIATIONS or _INITIALS.fullmatch(word) is not None
    continues_lowercase = next_word is not None and next_word[0].islower()
    return not (abbreviation or continues_lowercase)


def _cut_after(words: range, is_end: Callable[[int], bool]) -> list[range]:
    """Cuts a range of word indices after every word that is_end accepts."""
    pieces = []
    start = words.start
    for i in words:
        if is_end(i):
            pieces.append(range(start, i + 1))
            start = i + 1
    if start < words.stop:
        pieces.append(range(start, words.stop))
    return pieces


def _chunks(words: range, size: int) -> list[range]:
    return [words[i : i + size] for i in range(0, len(words), size)]


def _pack(pieces: list[range], max_words: int) -> list[range]:
    """Merges consecutive pieces while the merged piece has at most max_words words."""
    groups: list[range] = []
    for piece in pieces:
        if groups and len(groups[-1]) + len(piece) <= max_words:
            groups[-1] = range(groups[-1].start, piece.stop)
        else:
            groups.append(piece)
    return groups
