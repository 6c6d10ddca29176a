"""Standard input read as it arrives, with quiet spells marked and bytes that are not UTF-8 replaced."""

import os

from csm_cli.text.script import IDLE
from csm_cli.text.text_input import read_text

WARNING = "standard input is not valid UTF-8: each undecodable byte is read as U+FFFD"


def test_text_arrives_as_written_with_a_mark_after_each_quiet_spell():
    read_fd, write_fd = os.pipe()
    warnings: list[str] = []
    writes = [b"First sentence. Sec", b"ond \xe2\x82", b"\xac one.\n", b"caf\xe9 \xff\xfeok.\n"]
    with os.fdopen(read_fd) as stdin:
        text = read_text(stdin, warnings.append, idle_seconds=0.05)
        got = []
        for data in writes:  # each written only once the one before was read and the input has gone quiet
            os.write(write_fd, data)
            got += [next(text), next(text)]
        os.close(write_fd)
        got += list(text)
    assert got == ["First sentence. Sec", IDLE, "ond ", IDLE, "€ one.\n", IDLE, "caf\ufffd \ufffd\ufffdok.\n", IDLE, ""]
    assert warnings == [WARNING]


def test_a_truncated_character_at_the_end_is_replaced_not_dropped():
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"Hi \xe2\x82")
    os.close(write_fd)
    warnings: list[str] = []
    with os.fdopen(read_fd) as stdin:
        assert "".join(t for t in read_text(stdin, warnings.append) if t) == "Hi \ufffd\ufffd"
    assert warnings == [WARNING]
