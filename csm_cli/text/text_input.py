"""Text coming in: standard input read as it arrives, block by block (not line by line, so a sentence can be spoken
before its line ends), with a mark after a quiet spell; bytes that are not UTF-8 replaced, never dropped."""

import codecs
import io
import os
import re
import select
from collections.abc import Callable, Iterator
from typing import TextIO

from .script import IDLE

IDLE_SECONDS = 2.0  # a line's pending text is handed over after this long without more text
BLOCK_BYTES = 1 << 16
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes that are not UTF-8, as Python's surrogateescape keeps them


class Replacer:
    """Undecodable bytes (lone surrogates from surrogateescape) -> U+FFFD each, with one warning per source."""

    def __init__(self, source: str, warn: Callable[[str], None]) -> None:
        self.source = source
        self.warn = warn
        self.warned = False

    def __call__(self, text: str) -> str:
        replaced, count = _UNDECODABLE.subn("\N{REPLACEMENT CHARACTER}", text)
        if count and not self.warned:
            self.warned = True
            self.warn(f"{self.source} is not valid UTF-8: each undecodable byte is read as U+FFFD")
        return replaced


def read_text(stream: TextIO, warn: Callable[[str], None], idle_seconds: float = IDLE_SECONDS
              ) -> Iterator[str | None]:
    """The text of `stream` (standard input) as it arrives, decoded as UTF-8; `IDLE` after `idle_seconds` with
    nothing new, once per quiet spell."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    replace = Replacer("standard input", warn)
    for block in _blocks(stream, idle_seconds):
        yield IDLE if block is None else replace(decoder.decode(block))
    yield replace(decoder.decode(b"", final=True))


def _blocks(stream: TextIO, idle_seconds: float) -> Iterator[bytes | None]:
    """Bytes as the operating system hands them over; None once per quiet spell."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):  # in-process runners give a stream without one
        yield from iter(lambda: stream.buffer.read1(BLOCK_BYTES), b"")
        return
    quiet = False
    while True:
        ready, _, _ = select.select([fd], [], [], idle_seconds)
        if not ready:
            if not quiet:
                yield None
            quiet = True
            continue
        quiet = False
        block = os.read(fd, BLOCK_BYTES)
        if not block:
            return
        yield block
