"""Playback status on stderr: one updating line on a terminal, an occasional plain line otherwise, nothing when
quiet; and the summary printed at the end."""

import time
from types import TracebackType
from typing import Self

from rich.console import Console
from rich.live import Live
from rich.text import Text

from .playback import PlaybackStats, PlaybackStatus

PLAIN_INTERVAL_S = 2.0  # without a terminal, a line per state change and at most one per this many seconds between


def _rtf(realtime_factor: float | None) -> str:
    return "-" if realtime_factor is None else f"{realtime_factor:.2f}"


def describe(status: PlaybackStatus) -> str:
    state = "waiting for text" if status.state == "waiting" else status.state
    return (
        f"{state:<9} {status.seconds_played:6.1f} s played  buffer {status.buffer_seconds:4.1f} s  "
        f"RTF {_rtf(status.realtime_factor)}"
    )


class StatusDisplay:
    """An ``on_status`` callback for play(); use it as a context manager so that the terminal line goes away."""

    def __init__(self, console: Console | None = None, *, quiet: bool = False) -> None:
        self._console = console or Console(stderr=True)
        self._quiet = quiet
        self._live: Live | None = None
        self._last_state: str | None = None
        self._last_line_at = 0.0

    def __call__(self, status: PlaybackStatus) -> None:
        if self._quiet:
            return
        if self._console.is_terminal:
            if self._live is None:
                self._live = Live(console=self._console, auto_refresh=False, transient=True)
                self._live.start()
            self._live.update(Text(describe(status)), refresh=True)
        elif status.state != self._last_state or time.monotonic() - self._last_line_at >= PLAIN_INTERVAL_S:
            self._console.print(describe(status), markup=False, highlight=False)
            self._last_state = status.state
            self._last_line_at = time.monotonic()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def summary(stats: PlaybackStats) -> str:
    first_audio = "-" if stats.time_to_first_audio_s is None else f"{stats.time_to_first_audio_s:.2f} s"
    return (
        f"first audio after {first_audio}, {stats.seconds_played:.1f} s played, {stats.underruns} underruns, "
        f"RTF {_rtf(stats.realtime_factor)}"
    )
