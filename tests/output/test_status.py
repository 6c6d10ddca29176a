import io

from rich.console import Console

from csm_cli.output.playback import PlaybackStats, PlaybackStatus
from csm_cli.output.status import StatusDisplay, summary

STATS = PlaybackStats(time_to_first_audio_s=0.042, seconds_generated=3.2, seconds_played=3.2, underruns=1,
                      realtime_factor=0.31, preroll_wait_s=0.0)


def status(state: str, played: float) -> PlaybackStatus:
    return PlaybackStatus(state=state, seconds_played=played, buffer_seconds=1.5, realtime_factor=0.5)


def test_without_a_terminal_a_plain_line_per_state_change():
    stream = io.StringIO()
    with StatusDisplay(Console(file=stream, force_terminal=False)) as display:
        for update in [status("buffering", 0), status("speaking", 0.1), status("speaking", 0.2), status("done", 3)]:
            display(update)
    lines = stream.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["buffering", "speaking", "done"]
    assert "buffer  1.5 s" in lines[1] and "RTF 0.50" in lines[1]


def test_quiet_prints_nothing():
    stream = io.StringIO()
    with StatusDisplay(Console(file=stream, force_terminal=True), quiet=True) as display:
        display(status("speaking", 1.0))
    assert stream.getvalue() == ""


def test_on_a_terminal_the_line_is_transient():
    stream = io.StringIO()
    with StatusDisplay(Console(file=stream, force_terminal=True, width=100)) as display:
        display(status("speaking", 1.0))
        assert "speaking" in stream.getvalue()
    assert stream.getvalue().endswith("\r\x1b[1A\x1b[2K")  # the line is erased when the display closes


def test_summary():
    assert summary(STATS) == "first audio after 0.04 s, 3.2 s played, 1 underruns, RTF 0.31"
