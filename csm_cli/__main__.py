"""The `csm` command and `python -m csm_cli`. Ctrl-C ends the program at once while it starts (importing Typer and
the CLI takes a while on a busy machine), until the command takes Ctrl-C over (cli.user_errors)."""

import os
import signal
import sys
from contextlib import suppress
from types import FrameType

from .errors import INTERRUPTED_EXIT_STATUS


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    with suppress(OSError):  # stderr closed: the exit status says it
        os.write(2, b"csm: interrupted\n")
    os._exit(INTERRUPTED_EXIT_STATUS)


def _open_closed_standard_streams() -> None:
    """Opens /dev/null on each standard descriptor the caller closed (`2>&-`), so that no file opened later takes
    it (C libraries write their messages to descriptor 2, which could be the output WAV). A closed stdin reads as
    empty input, a closed stderr discards messages; sys.stdout stays None, for `--out -` to refuse."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            devnull = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: `fd`, those below are open
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the process's own, for its whole life
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - the process's own, for its whole life


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    _open_closed_standard_streams()
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
