"""Progress on stderr: nothing for a quick step, a live line for a step that lasts, gone before the job prints."""

from __future__ import annotations

import io
import time

from rich.console import Console

from envkit.cli._progress import LiveProgress


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=100), out


def test_a_quick_step_shows_nothing():
    con, out = console()
    progress = LiveProgress(delay=0.5, console=con)
    advance = progress("snapshot of the project", 0)
    advance(1000)
    progress.pause()
    assert out.getvalue() == ""


def test_a_long_step_shows_its_label_and_bytes_then_clears():
    con, out = console()
    progress = LiveProgress(delay=0.05, console=con)
    advance = progress("hashing input /data", 4_000_000)
    advance(2_000_000)
    deadline = time.monotonic() + 5
    while "hashing input /data" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.pause()
    text = out.getvalue()
    assert "hashing input /data" in text and "MB" in text
    progress("hashing outputs", 0)  # a later step starts a fresh display
    progress.pause()


def test_disabled_progress_is_silent():
    con, out = console()
    progress = LiveProgress(enabled=False, delay=0, console=con)
    progress("x", 1)(1)
    progress.pause()
    assert out.getvalue() == ""
