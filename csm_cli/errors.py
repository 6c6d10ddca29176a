"""Errors the user can act on: the CLI prints their message on one line and exits non-zero."""


class CsmError(Exception):
    """A failure caused by input or environment, with a message that says what to do next."""

    exit_code = 1


def first_line(error: BaseException, limit: int = 120) -> str:
    """The first line of a library's error message, at most `limit` characters: the reason inside a CsmError's line."""
    lines = str(error).splitlines()
    return lines[0][:limit] if lines else type(error).__name__
