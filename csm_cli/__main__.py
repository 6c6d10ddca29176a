"""The `csm` command and `python -m csm_cli`. Ctrl-C ends the program at once while it starts (importing Typer and
the CLI takes a while on a busy machine), until the command takes Ctrl-C over (cli.user_errors)."""

import os
import signal
from contextlib import suppress
from types import FrameType

from .errors import INTERRUPTED_EXIT_STATUS


def _interrupted_while_starting(signum: int, frame: FrameType | None) -> None:
    with suppress(OSError):  # stderr closed: the exit status says it
        os.write(2, b"csm: interrupted\n")
    os._exit(INTERRUPTED_EXIT_STATUS)


def main() -> None:
    signal.signal(signal.SIGINT, _interrupted_while_starting)
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
