"""Text to speak: sentences handed over as soon as they are complete, speaker tags, and utterances.

Sentences
---------
A sentence ends after ``.``, ``!``, ``?``, ``…`` or a CJK full stop, with any closing quotes or brackets, except
after an abbreviation (``Dr.``), an initial (``J.``, ``e.g.``) or before a word that continues in lowercase.
`SentenceSplitter` finds them in text that arrives in pieces (a pipe, an LLM's deltas); `passages` groups the
sentences of each input line; `split_utterances` packs short sentences into one utterance and cuts a sentence too
long for the model's window at clause punctuation, then between words.

Speaker tags
------------
A line may start with a speaker tag: a whole number (0 to 999999, ASCII digits), a colon and at least one space::

    0: Hello there.
    1 : Hi!

Lines without a tag are spoken by the default speaker (``--speaker``). Only the first tag of a line
counts, so ``0: 2024: a good year`` says "2024: a good year" as speaker 0; tag a line explicitly to
speak text that itself starts like a tag.

A line that starts like a mistyped tag (``-1: hi``, ``1.5: hi``, ``10000000: hi``, ``S1: hi``, ``Speaker 1: hi``,
``[1]: hi``, ``2:hi`` with no space, or a bare ``3:``) is spoken whole, as typed, by the default
speaker, with a warning. Text such as ``Note: this``, ``10:30 is fine`` or ``3:1 odds`` is ordinary
text: no tag, no warning, nothing changed.
"""

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

_TAG = re.compile(r"(?P<speaker>[0-9]+)\s*:\s+(?P<text>.+)", re.DOTALL)
_BARE_TAG = re.compile(r"\d+\s*:")  # a tag still waiting for its text
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


class SentenceSplitter:
    """Text arriving in pieces -> whole sentences, each as soon as it is complete.

    `feed(delta)` adds text and returns the sentences it completes, in order; `flush()` returns what is left (the
    start of a sentence), to call at a newline, at the end of the input or after an idle spell. A sentence is
    complete once the character after it has arrived, since a closing quote may follow; one ending in ``.`` once
    the next word has begun, since that word decides (``Wait... what`` goes on). Sentences are stripped slices of
    the text, cut where the module's rules cut the whole text: joined with spaces they give back every word in
    order, however the text was cut into deltas. Used for standard input and for text streamed to the server.
    """

    def __init__(self) -> None:
        self._text = ""

    @property
    def pending(self) -> str:
        """The text fed but not yet handed over, stripped."""
        return self._text.strip()

    def feed(self, delta: str) -> list[str]:
        self._text += delta
        return self._take(final=False)

    def flush(self) -> list[str]:
        return self._take(final=True)

    def _take(self, final: bool) -> list[str]:
        words = list(_WORD.finditer(self._text))
        sentences = []
        start = cut = 0
        for i, word in enumerate(words):
            next_word = words[i + 1][0] if i + 1 < len(words) else None
            complete = word.end() < len(self._text) and (next_word is not None or not _waits_for_next_word(word[0]))
            if not (final or complete):
                break
            if _ends_sentence(word[0], next_word):
                sentences.append(self._text[words[start].start() : word.end()])
                start, cut = i + 1, word.end()
        if final:
            if start < len(words):
                sentences.append(self._text[words[start].start() :].strip())
            cut = len(self._text)
        self._text = self._text[cut:]
        return sentences


@dataclass(frozen=True)
class Passage:
    """Whole sentences of one input line handed over together; `line` counts input lines from 1, blank ones
    included, and `first` marks the line's first passage, where a speaker tag may stand."""

    line: int
    text: str
    first: bool


IDLE = None  # in a text source: no text has arrived for a while


def passages(source: Iterable[str | None]) -> Iterator[Passage]:
    """Text as it arrives (`IDLE` marks a quiet spell) -> each line's sentences as soon as they are complete.

    A newline ends the line's last sentence. A quiet spell hands over the line's pending text, the start of a
    sentence, unless it is a bare speaker tag (``1:``), which waits for its text."""
    splitter = SentenceSplitter()
    line, first = 1, True

    def passage(sentences: list[str]) -> Iterator[Passage]:
        nonlocal first
        if sentences:
            yield Passage(line, " ".join(sentences), first)
            first = False

    for text in source:
        if text is IDLE:
            if not (first and _BARE_TAG.fullmatch(splitter.pending)):
                yield from passage(splitter.flush())
            continue
        *ended, rest = text.split("\n")
        for line_text in ended:
            yield from passage(splitter.feed(line_text) + splitter.flush())
            line, first = line + 1, True
        yield from passage(splitter.feed(rest))
    yield from passage(splitter.flush())


def parse_line(line: str, default_speaker: int, max_speaker: int) -> Line:
    """Reads the optional speaker tag of a line (see the module docstring); never drops any text. A tag names a
    speaker from 0 to `max_speaker` in ASCII digits; another number is a mistyped tag."""
    assert 0 <= default_speaker <= max_speaker, (default_speaker, max_speaker)
    line = line.strip()
    if (tag := _TAG.fullmatch(line)) and int(tag["speaker"]) <= max_speaker:
        return Line(int(tag["speaker"]), tag["text"])
    if lookalike := _TAG_LOOKALIKE.match(line):
        warning = (
            f"'{lookalike[0]}' is not a speaker tag (write 'N: text' with N a whole number from 0 to {max_speaker}, "
            f"e.g. '1: hello'); the line is spoken as typed by speaker {default_speaker}"
        )
        return Line(default_speaker, line, warning)
    return Line(default_speaker, line)


def split_utterances(text: str, max_words: int, pack_words: int) -> list[str]:
    """Cuts text into utterances: whole sentences, packed together while they have at most `pack_words` words.

    A sentence of more than `max_words` words (too long for the model's window) is cut at clause punctuation
    (, ; :) and, failing that, between words, into pieces of at most max_words. Each utterance is a slice of the
    text, so joining them with spaces gives back the same words in the same order; blank text gives no utterance.
    Words are runs of non-space characters; in unspaced CJK text a full stop also ends one.
    """
    assert 1 <= pack_words <= max_words, (pack_words, max_words)
    spans = [word.span() for word in _WORD.finditer(text)]
    words = [text[start:end] for start, end in spans]

    def ends_sentence(i: int) -> bool:
        return _ends_sentence(words[i], words[i + 1] if i + 1 < len(words) else None)

    def ends_clause(i: int) -> bool:
        return _CLAUSE_END.search(words[i]) is not None

    pieces = [
        piece
        for sentence in _cut_after(range(len(words)), ends_sentence)
        for piece in ([sentence] if len(sentence) <= max_words else _pack(
            [chunk for clause in _cut_after(sentence, ends_clause) for chunk in _chunks(clause, max_words)],
            max_words))
    ]
    return [text[spans[group.start][0] : spans[group.stop - 1][1]] for group in _pack(pieces, pack_words)]


def _waits_for_next_word(word: str) -> bool:
    """Whether a sentence may end after word, but only the next word can tell (see `_ends_sentence`)."""
    end = _SENTENCE_END.search(word)
    return end is not None and end[0].startswith(".")


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
