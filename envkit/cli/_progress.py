"""Progress on stderr (rich): a spinner for stages, bars for byte counts. Silent when not a terminal or --json."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from envkit.cli._console import err_console

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

# rich.progress is imported where a bar is really shown: a command whose stderr is not a terminal never pays for it.


@contextlib.contextmanager
def stage_spinner(enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """Yield `step(message)`: each call shows a new stage with a spinner and elapsed time."""
    if not enabled:
        yield lambda _msg: None
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=err_console.unwrap(), transient=False)
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
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                        console=err_console.unwrap(), transient=False)

    def bar(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total or None)
        return lambda n: progress.advance(task, n)

    with progress:
        yield bar


class LiveProgress:
    """``progress(label, total_bytes) -> advance(n)`` for the steps of a run or replay, shown on stderr only once a
    step has lasted about a second (a quick run prints nothing more than before).

    A step with a byte total gets a bar; one without (``total`` 0: a snapshot, a pull, a build step) a spinner with
    the bytes seen so far, and it ends when the next step begins. :meth:`pause` clears the display before the job's
    own output streams; the next step starts a fresh one.
    """

    def __init__(self, enabled: bool = True, delay: float = 1.0, console: Console | None = None) -> None:
        self.enabled = enabled
        self.delay = delay
        self._console = console
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._open: list[int] = []
        self._timer: threading.Timer | None = None
        self._live = False

    def __call__(self, label: str, total: int) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _n: None
        with self._lock:
            if self._progress is None:
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    SpinnerColumn,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                          DownloadColumn(), TimeElapsedColumn(),
                                          console=self._console or err_console.unwrap(), transient=True)
            progress = self._progress
            completed = {t.id: t.completed for t in progress.tasks}
            for task in self._open:  # a step without a total ends when the next one begins
                done = max(completed.get(task, 0), 1)
                progress.update(task, total=done, completed=done)
            self._open = []
            task = progress.add_task(label if len(label) <= 70 else label[:67] + "...", total=total or None)
            if not total:
                self._open.append(task)
            if not self._live and self._timer is None:
                self._timer = threading.Timer(self.delay, self._show)
                self._timer.daemon = True
                self._timer.start()
        return lambda n: progress.advance(task, n)

    def _show(self) -> None:
        with self._lock:
            if self._progress is not None and self._timer is not None and not self._live:
                self._progress.start()
                self._live = True

    def pause(self) -> None:
        """Clear the display (the job's output comes next, or the command ends)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._progress is not None and self._live:
                self._progress.stop()
            self._progress, self._open, self._live = None, [], False


@contextlib.contextmanager
def transfer_bar(label: str, enabled: bool = True, delay: float = 1.0,
                 count_bytes: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(bytes just moved, total bytes)`` for a push or pull; the bar appears only once the transfer has
    taken ``delay`` seconds, so that quick ones print nothing. ``advance`` may be called from several threads; with
    ``count_bytes`` false (a push through the engine, which reports no bytes) it shows a pulsing bar and the time."""
    if not enabled:
        yield lambda _n, _total: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if count_bytes else []
    progress = Progress(*columns, TimeElapsedColumn(), console=err_console.unwrap(), transient=False)
    lock = threading.Lock()
    state: dict = {"done": 0, "total": None, "task": None, "closed": False}

    def show() -> None:
        with lock:
            if state["closed"]:
                return
            progress.start()
            state["task"] = progress.add_task(label, total=state["total"], completed=state["done"])

    def advance(n: int, total: int) -> None:
        with lock:
            state["done"] += n
            state["total"] = total
            if state["task"] is not None:
                progress.update(state["task"], completed=state["done"], total=total)

    timer = threading.Timer(delay, show)
    timer.daemon = True
    timer.start()
    finished = False
    try:
        yield advance
        finished = True
    finally:
        timer.cancel()
        with lock:
            state["closed"] = True
            if state["task"] is not None:
                if finished:  # a pulsing bar stops full; a failed transfer keeps what it reached
                    progress.update(state["task"], completed=state["total"] or 1, total=state["total"] or 1)
                progress.stop()
