"""Errors the user can act on: the CLI prints their message on one line and exits non-zero."""

INTERRUPTED_EXIT_STATUS = 130  # 128 + SIGINT, as a shell reports a program ended by Ctrl-C


class CsmError(Exception):
    """A failure caused by input or environment, with a message that says what to do next."""

    exit_code = 1
