"""Errors the user can act on: the CLI prints their message on one line and exits non-zero; warnings of faults csm
works around, which the CLI prints on one line and goes on."""

import sys


class CsmError(Exception):
    """A failure caused by input or environment, with a message that says what to do next."""

    exit_code = 1


class CsmWarning(UserWarning):
    """A fault csm works around (a damaged cache entry, an unwritable cache), raised with `warnings.warn`: the CLI
    prints it as one line (`warn`), a program using the package gets a Python warning."""


def warn(message: str) -> None:
    print(f"csm: warning: {message}", file=sys.stderr)


def first_line(error: BaseException, limit: int = 120) -> str:
    """The first line of a library's error message, at most `limit` characters: the reason inside a CsmError's line."""
    lines = str(error).splitlines()
    return lines[0][:limit] if lines else type(error).__name__
