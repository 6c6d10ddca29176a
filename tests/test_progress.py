"""The load display: bytes for what is read, a count for graph captures."""

import io
import time

from rich.console import Console

from csm_cli.progress import LoadProgress


def drawn_lines(output: str, description: str) -> list[str]:
    """Every line the live display drew for the task of `description`."""
    lines = [line.strip() for frame in output.split("\r\x1b[2K") for line in frame.split("\n")]
    return [line for line in lines if line.startswith(description)]


def test_captures_are_counted_and_weights_measured_in_bytes():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=120)
    with LoadProgress(console) as shown, shown.steps_task("capturing CUDA graphs", 9) as captured:
        for _ in range(3):
            captured()
        with shown.bytes_task("loading weights", 2_000_000) as advance:
            advance(1_000_000)
    steps = drawn_lines(out.getvalue(), "capturing CUDA graphs")
    assert any(" 3/9 " in line for line in steps) and not any("byte" in line or "B/s" in line for line in steps)
    assert any("/2.0 MB" in line for line in drawn_lines(out.getvalue(), "loading weights"))


def test_a_disabled_display_draws_nothing():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True)
    with LoadProgress(console, enabled=False) as shown, shown.steps_task("capturing CUDA graphs", 9) as captured:
        captured()
    assert out.getvalue() == ""


def test_downloads_count_into_one_bar_of_their_known_total():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system=None, width=120)
    with LoadProgress(console) as shown, shown.download_task("downloading sesame/csm-1b", 3_000_000) as tqdm_class:
        for size in (1_000_000, 500_000):  # two files, as huggingface_hub reports their chunks
            with tqdm_class(total=size, initial=0, desc="file", unit="B") as bar:
                bar.update(size)
        time.sleep(0.3)  # a few refreshes of the live display
    lines = drawn_lines(out.getvalue(), "downloading sesame/csm-1b")
    assert any("1.5/3.0 MB" in line for line in lines), lines
    assert not drawn_lines(out.getvalue(), "file")
