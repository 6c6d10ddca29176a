"""A rich progress display on stderr while files download, weights load and CUDA graphs are captured."""

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
    """One transient progress display for everything done at load time; disabled, it shows nothing."""

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

    def tqdm_class(self) -> type:
        """A tqdm class for huggingface_hub's downloads that draws into this display instead of printing."""
        from huggingface_hub.utils import tqdm as hub_tqdm

        progress = self._progress

        class RichTqdm(hub_tqdm):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self._task = None
                super().__init__(*args, **kwargs)
                self._task = progress.add_task(self.desc or "downloading", total=self.total)

            def display(self, msg: str | None = None, pos: int | None = None) -> bool:
                if self._task is not None:
                    progress.update(self._task, completed=self.n, total=self.total)
                return True

            def close(self) -> None:
                if self._task is not None:
                    progress.remove_task(self._task)
                    self._task = None
                super().close()

        return RichTqdm
