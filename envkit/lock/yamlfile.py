"""Reading the YAML files users hand to envkit (specs, lockfiles) with one-line errors of the caller's class."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from envkit.errors import EnvkitError

_INDENT = re.compile(r"^ *", re.MULTILINE)
_C_SAFE_DEPTH = 400  # libyaml's composer recurses on the C stack: a document nested deeper crashes the process


def _loader(text: str) -> type:
    """libyaml's safe loader (a lock of 130 .debs reads in 20 ms instead of 400) for a document that cannot be
    nested deeply: few brackets and little indentation bound its depth. Anything else gets PyYAML's own loader,
    whose deep nesting ends in a RecursionError, not a crash."""
    c_loader = getattr(yaml, "CSafeLoader", None)
    if c_loader is None or text.count("[") + text.count("{") > _C_SAFE_DEPTH:
        return yaml.SafeLoader
    if max((len(m) for m in _INDENT.findall(text)), default=0) > _C_SAFE_DEPTH:
        return yaml.SafeLoader
    return c_loader


def load_text(text: str) -> Any:
    """``text`` parsed as YAML with the fastest safe loader it can take; raises yaml.YAMLError or RecursionError."""
    return yaml.load(text, Loader=_loader(text))


def read_yaml(path: Path, error: type[EnvkitError], what: str, missing_hint: str, invalid_hint: str | None = None) -> Any:
    """The parsed YAML of ``path``.

    Raises:
        ``error``: the file is missing, unreadable, a directory, not YAML (with the line and column), or nested
            too deeply to parse.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{what} {path} not found", hint=missing_hint) from exc
    except IsADirectoryError as exc:
        raise error(f"{path} is a directory, not a {what}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        return yaml.load(text, Loader=_loader(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise error(f"{path} is not valid YAML{where}: {problem}", hint=invalid_hint) from exc
    except RecursionError:  # PyYAML composes nested nodes recursively: a file of 100,000 '[' gets this far
        raise error(f"{path} is nested too deeply to be a {what}", hint=invalid_hint) from None
