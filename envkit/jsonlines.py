"""Reading the JSON-lines files jobs write as they go (step traces, op traces): a job killed while writing leaves a
cut last line, which is tolerated; a damaged line anywhere else is one error naming its number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from envkit.errors import TraceError


def read_json_lines(path: Path, what: str, damaged_hint: str) -> tuple[Iterator[tuple[int, Any]], list[bool]]:
    """The parsed non-empty lines of ``path`` as (line number, object), and a one-item flag list set to True once a
    cut last line (no newline after it, not JSON) was dropped while iterating.

    Raises:
        TraceError: ``path`` cannot be read (at once), or a line before the last is not JSON (while iterating);
            ``what`` names the file's kind in the message ("step trace", "op trace").
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read the {what} {path} ({getattr(exc, 'strerror', None) or exc})") from exc
    lines = text.split("\n")
    cut = [False]

    def parsed() -> Iterator[tuple[int, Any]]:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                if number == len(lines):  # no newline after it: the job was killed while writing
                    cut[0] = True
                    continue
                raise TraceError(f"{what} {path}: line {number} is not JSON", hint=damaged_hint) from None
            yield number, obj

    return parsed(), cut
