"""Consoles: data (tables, JSON) go to stdout, diagnostics and progress to stderr."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console


class _LazyConsole:
    """A rich Console made on first use: importing rich costs more than a listing of a thousand runs, and most
    commands print their data with plain writes."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def unwrap(self) -> Console:
        """The Console itself (for rich's own classes, which want the real thing)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unwrap(), name)

    @property
    def is_terminal(self) -> bool:
        if self._console is not None:
            return self._console.is_terminal
        stream = sys.stderr if self._options.get("stderr") else sys.stdout
        return bool(getattr(stream, "isatty", lambda: False)())

    def print(self, *objects: Any, **options: Any) -> None:
        """rich's print; plain text with markup and highlighting off (most of envkit's lines) is written as it is,
        without importing rich."""
        plain = (self._console is None and all(isinstance(o, str) for o in objects)
                 and not options.get("markup") and not options.get("style")
                 and set(options) <= {"highlight", "markup", "end", "sep", "soft_wrap"})
        if not plain:
            self.unwrap().print(*objects, **options)
            return
        stream = sys.stderr if self._options.get("stderr") else sys.stdout
        stream.write(options.get("sep", " ").join(objects) + options.get("end", "\n"))
        stream.flush()


# No markup by default: messages carry user text (paths, "[0]" indices, package extras) that rich would parse.
out_console: Console = _LazyConsole(soft_wrap=True, highlight=False, markup=False)  # type: ignore[assignment]
err_console: Console = _LazyConsole(stderr=True, soft_wrap=True, highlight=False, markup=False)  # type: ignore[assignment]


def print_json(data: Any) -> None:
    """Print machine-readable JSON on stdout (no colour, no wrapping)."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that reorder what a terminal shows.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNPRINTABLE_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: object, keep_newlines: bool = False) -> str:
    """``text`` safe to write to a terminal: control characters shown escaped (``\\x1b``, ``\\n``), as ``repr``
    would, so a record's or a path's content cannot clear the screen, set the title or forge lines.

    Args:
        keep_newlines: keep ``\\n`` as a line break (multi-line messages such as a build log).
    """
    pattern = _UNPRINTABLE_BUT_NEWLINE if keep_newlines else _UNPRINTABLE
    return pattern.sub(lambda m: repr(m.group(0))[1:-1], str(text))
