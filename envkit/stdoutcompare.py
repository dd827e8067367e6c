"""A job's stdout as its output: compared line by line, with lines that carry timings masked.

A job whose only result is what it prints (an evaluation that prints a score, a script printing a hash) writes no
file, so a verdict on its files alone would compare nothing. For such a run the replay compares stdout: the first
line that differs makes the verdict DIVERGED. Lines that legitimately change from run to run (``epoch 3 took
1.82s``, a timestamp) are masked by regular expressions: ``envkit replay --ignore-lines REGEX`` or the project
configuration's ``ignore_lines``. A masked line still counts as a line, so line numbers stay those of the log.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import ProjectConfigError
from envkit.project import ProjectConfig, register_key

CONFIG_KEY = "ignore_lines"
SHOWN = 120  # characters of a differing line quoted in a verdict

register_key(CONFIG_KEY, list)


@dataclass(frozen=True)
class StdoutComparison:
    """What comparing two stdout logs found: ``lines`` compared (unmasked, in the shorter log), and the first line
    that differs (1-based, None when none does) with both sides (None where a log had ended)."""

    lines: int
    masked: int
    first_line: int | None = None
    original: str | None = None
    replay: str | None = None

    @property
    def differs(self) -> bool:
        return self.first_line is not None

    def to_dict(self) -> dict[str, object]:
        return {"lines": self.lines, "masked": self.masked, "first_line": self.first_line,
                "original": self.original, "replay": self.replay}


def compile_patterns(patterns: Iterable[str], where: str = "--ignore-lines") -> list[re.Pattern[bytes]]:
    """The masks as byte patterns (logs are bytes, and need not be UTF-8).

    Raises:
        ProjectConfigError: a pattern is not a valid regular expression (naming it and where it came from).
    """
    out = []
    for text in patterns:
        if not isinstance(text, str):
            raise ProjectConfigError(f"{where}: {text!r} is not a string")
        try:
            out.append(re.compile(text.encode("utf-8", "surrogateescape")))
        except re.error as exc:
            raise ProjectConfigError(f"{where}: {text!r} is not a regular expression ({exc})",
                                     hint="e.g. --ignore-lines 'took [0-9.]+ ?s'") from exc
    return out


def configured_patterns(config: ProjectConfig) -> list[str]:
    """The project configuration's ``ignore_lines`` (checked: a list of valid regular expressions)."""
    patterns = list(config.extra.get(CONFIG_KEY) or [])
    where = f"{config.source.name if config.source else 'configuration'}: {CONFIG_KEY}"
    compile_patterns(patterns, where)
    return patterns


def compare_stdout(a: Path, b: Path, patterns: Iterable[str] = ()) -> StdoutComparison:
    """Compare two stdout logs line by line, masking lines any pattern matches (``re.search``) in both.

    A missing log reads as empty. Lines are compared as bytes; a differing line is quoted decoded with
    replacement characters, cut to :data:`SHOWN` characters.
    """
    masks = compile_patterns(patterns)
    la, lb = _lines(a), _lines(b)
    compared = masked = 0
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else None
        y = lb[i] if i < len(lb) else None
        mx = x is not None and any(m.search(x) for m in masks)
        my = y is not None and any(m.search(y) for m in masks)
        if mx and my:
            masked += 1
            continue
        if x == y:
            compared += 1
            continue
        return StdoutComparison(compared, masked, i + 1, _shown(x), _shown(y))
    return StdoutComparison(compared, masked)


def _lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except OSError:
        return []


def _shown(line: bytes | None) -> str | None:
    if line is None:
        return None
    text = line.decode("utf-8", "replace")
    return text if len(text) <= SHOWN else text[:SHOWN - 3] + "..."
