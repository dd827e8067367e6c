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


def complete_run_id(incomplete: str) -> list[str]:
    """Shell completion of a run id: ``last`` and the stored runs starting with what was typed (newest first)."""
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    try:
        ids = sorted(FileStore(store_dir()).run_ids(), reverse=True)
    except Exception:  # noqa: BLE001 - completion must never print an error into the user's shell
        return []
    return [i for i in ["last", *ids] if i.startswith(incomplete)][:200]
