"""Progress on stderr (rich): a spinner for stages, bars for byte counts. Silent when not a terminal or --json."""

from __future__ import annotations

import contextlib
import threading
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


@contextlib.contextmanager
def transfer_bar(label: str, enabled: bool = True, delay: float = 1.0,
                 count_bytes: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Yield ``advance(bytes just moved, total bytes)`` for a push or pull; the bar appears only once the transfer has
    taken ``delay`` seconds, so that quick ones print nothing. ``advance`` may be called from several threads; with
    ``count_bytes`` false (a push through the engine, which reports no bytes) it shows a pulsing bar and the time."""
    if not enabled:
        yield lambda _n, _total: None
        return
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn()] if count_bytes else []
    progress = Progress(*columns, TimeElapsedColumn(), console=err_console, transient=False)
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
