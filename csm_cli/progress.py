"""A rich progress display on stderr while files download, weights load, CUDA graphs are captured and the bench
runs."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text


class _ByUnit(ProgressColumn):
    """A column that renders byte tasks with one column and counted steps with another (or not at all)."""

    def __init__(self, bytes_column: ProgressColumn, steps_column: ProgressColumn | None = None) -> None:
        super().__init__()
        self._bytes = bytes_column
        self._steps = steps_column

    def render(self, task: Task) -> Text:
        if not task.fields.get("steps"):
            return self._bytes.render(task)
        return self._steps.render(task) if self._steps else Text("")


class LoadProgress:
    """One transient progress display for the steps of one stage (loading, a bench run); disabled, it shows
    nothing."""

    def __init__(self, console: Console | None = None, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _ByUnit(DownloadColumn(), MofNCompleteColumn()),
            _ByUnit(TransferSpeedColumn()),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> "LoadProgress":
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextmanager
    def bytes_task(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        task = self._progress.add_task(description, total=total)
        try:
            yield lambda n: self._progress.advance(task, n)
        finally:
            self._progress.remove_task(task)

    @contextmanager
    def steps_task(self, description: str, total: int) -> Iterator[Callable[[], None]]:
        task = self._progress.add_task(description, total=total, steps=True)
        try:
            yield lambda: self._progress.advance(task, 1)
        finally:
            self._progress.remove_task(task)

    @contextmanager
    def download_task(self, description: str, total: int) -> Iterator[type]:
        """A bytes task for several downloads: yields a tqdm stand-in for huggingface_hub's downloads, whose every
        file advances this one task (its total is known beforehand, so the bar shows the real total)."""
        with self.bytes_task(description, total) as advance:

            class Counter:
                def __init__(self, *args: Any, **kwargs: Any) -> None:
                    pass

                def __enter__(self) -> "Counter":
                    return self

                def __exit__(self, *exc: object) -> None:
                    pass

                def update(self, n: int | float | None = 1) -> None:
                    advance(int(n or 0))

                def close(self) -> None:
                    pass

            yield Counter
