"""Consoles: data (tables, JSON) go to stdout, diagnostics and progress to stderr."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console

# No markup by default: messages carry user text (paths, "[0]" indices, package extras) that rich would parse.
out_console = Console(soft_wrap=True, highlight=False, markup=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


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
