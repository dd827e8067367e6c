"""Progress on stderr (rich): a spinner for stages, bars for byte counts. Silent when not a terminal or --json."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from envkit.cli._console import err_console


@contextlib.contextmanager
def stage_spinner(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yield `step(message)`: each call shows a new stage with a spinner and elapsed time."""
    if not enabled:
        yield lambda _msg: None
        return
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=err_console, transient=False)
    current: list[int] = []

    def step(message: str) -> None:
        if current:
            progress.update(current[-1], completed=1, total=1)
        current.append(progress.add_task(message, total=None))

    with progress:
        yield step
        if current:
            progress.update(current[-1], completed=1, total=1)


@contextlib.contextmanager
def byte_bars(enabled: bool = True) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yield `bar(label, total_bytes)` -> `advance(n)`, one bar per file."""
    if not enabled:
        yield lambda _label, _total: (lambda _n: None)
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        console=err_console, transient=False)

    def bar(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total or None)
        return lambda n: progress.advance(task, n)

    with progress:
        yield bar
