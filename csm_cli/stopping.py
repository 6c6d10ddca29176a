"""The signals that stop the program: Ctrl-C (SIGINT), SIGTERM (`kill`, `timeout`, `systemctl stop`, a CI runner) and
SIGHUP (the terminal closed). Each ends it the way Ctrl-C does: the main thread gets `Stopped`, a KeyboardInterrupt,
wherever it is (whichever thread generates); outputs are closed on the way out; one line says why; the exit status
is 128 + the signal's number (130, 143, 129), as a shell reports a program a signal ended.

A signal the program was started with ignored (`nohup`, a background job of a script) stays ignored."""

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

STOP_SIGNALS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


class Stopped(KeyboardInterrupt):
    """A stop signal arrived: the program ends with `message` and `exit_status`."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def message(self) -> str:
        return f"csm: {STOP_SIGNALS[signal.Signals(self.signum)]}"

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


_received: Stopped | None = None
_ending = False


def _stop(signum: int, frame: FrameType | None) -> None:
    global _received
    if _ending:
        return
    _received = Stopped(signum)
    raise _received


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    stopped = Stopped(signum)
    with suppress(OSError):  # stderr closed: the exit status says it
        os.write(2, f"{stopped.message}\n".encode())
    os._exit(stopped.exit_status)


def _catch(handler: signal.Handlers | object) -> None:
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)  # type: ignore[arg-type]


def exit_while_starting() -> None:
    """Until `raised_while`: a stop signal ends the process at once, with its line (nothing is open yet)."""
    _catch(_stop_while_starting)


@contextmanager
def raised_while() -> Iterator[None]:
    """While the block runs, a stop signal raises `Stopped` in the main thread (main thread only); the handlers of
    before are put back after it (a test runner that runs commands in its own process keeps its own)."""
    global _received, _ending
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _received, _ending = None, False
    _catch(_stop)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def ending() -> None:
    """The program ends (after a stop or an error): another stop signal does not interrupt the ending. Not SIG_IGN,
    which the processes it starts would inherit."""
    global _ending
    _ending = True


def received() -> Stopped | None:
    """The stop signal that arrived, if one did: a library may have turned its KeyboardInterrupt into an error of its
    own (torch's loaders do), which is then the stop's doing, not a fault to report."""
    return _received
