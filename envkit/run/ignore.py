"""Gitignore-style patterns: the common subset that ``.envkitignore`` (and ``.gitignore`` outside git) supports.

Supported: blank lines and ``#`` comments, ``*``, ``?``, ``[...]`` classes, ``**`` (leading ``**/``, inner ``/**/``,
trailing ``/**``), a trailing ``/`` for directories only, a leading or inner ``/`` anchoring the pattern to the
directory of the ignore file, ``!`` to re-include, and ``\\`` escapes. As in git, the last matching pattern wins, and a
file cannot be re-included when one of its parent directories is excluded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


class IgnoreRules:
    """An ordered list of ignore patterns, matched against ``/``-separated paths relative to the project root."""

    def __init__(self, rules: Iterable[_Rule] = ()) -> None:
        self._rules = tuple(rules)
        self._dir_cache: dict[str, bool] = {}

    @classmethod
    def parse(cls, text: str, base: str = "") -> IgnoreRules:
        """Parse the text of an ignore file.

        Args:
            text: the file's content, one pattern a line.
            base: the directory holding the ignore file, relative to the root (``""`` for the root itself); its
                patterns only apply below it.
        """
        rules = []
        for line in text.splitlines():
            rule = _parse_line(line, base)
            if rule is not None:
                rules.append(rule)
        return cls(rules)

    def __add__(self, other: IgnoreRules) -> IgnoreRules:
        """Rules of ``other`` come later, so they win where both match (deeper ignore files override)."""
        return IgnoreRules(self._rules + other._rules)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def match(self, path: str, is_dir: bool) -> bool:
        """Whether the last pattern matching ``path`` itself excludes it (parents are not considered)."""
        for rule in reversed(self._rules):
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(path):
                return not rule.negate
        return False

    def excludes(self, path: str, is_dir: bool = False) -> bool:
        """Whether ``path`` is excluded, itself or through an excluded parent directory."""
        if not self._rules:
            return False
        parts = path.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            excluded = self._dir_cache.get(parent)
            if excluded is None:
                excluded = self._dir_cache[parent] = self.match(parent, True)
            if excluded:
                return True
        return self.match(path, is_dir)


def _parse_line(line: str, base: str) -> _Rule | None:
    line = line.rstrip("\r\n")
    # Trailing spaces are dropped unless escaped with a backslash, as git does.
    while line.endswith(" ") and not line.endswith("\\ "):
        line = line[:-1]
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith("\\!") or line.startswith("\\#"):
        line = line[1:]
    dir_only = line.endswith("/") and not line.endswith("\\/")
    if dir_only:
        line = line.rstrip("/")
    if not line:
        return None
    # A slash at the start or in the middle anchors the pattern to the ignore file's directory; without one the
    # pattern matches a name at any depth.
    anchored = "/" in line
    line = line.lstrip("/")
    prefix = re.escape(base + "/") if base else ""
    body = translate(line)
    regex = "^" + prefix + ("" if anchored else "(?:.*/)?") + body + "$"
    return _Rule(re.compile(regex, re.DOTALL), negate, dir_only)


def translate(pattern: str) -> str:
    """The regular expression (without anchors) for one gitignore glob."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")  # zero or more directories
            i += 3
            continue
        if pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")  # everything inside, not the directory itself
            i += 3
            continue
        c = pattern[i]
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append("[^/]*")
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                out.append(re.escape(c))  # an unclosed bracket is a literal
            else:
                body = pattern[i + 1:j]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)
