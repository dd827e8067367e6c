"""Option validators shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable

import typer


def choice(choices: tuple[str, ...]) -> Callable[[str | None], str | None]:
    """A Typer callback that accepts one of ``choices`` (or None, for options whose default is decided later)."""
    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}")
        return value
    return check
