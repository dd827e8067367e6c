"""Sizes in Docker's syntax, parsed in one place: ``--memory``, ``--shm-size``, a sweep's memory budget, the MLflow
artifact limit, and the container's limits as the engine API takes them (bytes).

The syntax is Docker's own (``RAMInBytes`` of go-units): a number, optionally with a fraction, and an optional binary
unit ``k``, ``m``, ``g``, ``t`` or ``p`` (any case), optionally followed by ``b`` or ``ib``: ``512m``, ``4g``,
``1.5g``, ``64MiB``, ``2gb``, or a plain byte count.
"""

from __future__ import annotations

import math
import re

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE | re.ASCII)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}


def parse_size(text: str) -> int:
    """Bytes of a size in Docker's syntax.

    Raises:
        ValueError: not a size (quoting the text), or too large to be one.
    """
    m = _SIZE.fullmatch(str(text))
    if not m:
        raise ValueError(f"{str(text)[:60]!r} is not a size (examples: 512m, 4g, 1.5g, 64MiB, or a number of bytes)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value >= 2**63:
        raise ValueError(f"{str(text)[:60]!r} is too large to be a size")
    return int(value)


def format_size(n: int) -> str:
    """A byte count in Docker's syntax, to the MiB (``8g``, ``1536m``)."""
    mib = max(1, n // 2**20)
    return f"{mib // 1024}g" if mib % 1024 == 0 else f"{mib}m"
