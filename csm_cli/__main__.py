"""The `csm` command and `python -m csm_cli`. Ctrl-C, SIGTERM and SIGHUP end the program at once while it starts
(importing Typer and the CLI takes a while on a busy machine), until the command takes them over (cli.user_errors)."""

import os
import sys

from .stopping import exit_while_starting


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
    exit_while_starting()
    _open_closed_standard_streams()
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
