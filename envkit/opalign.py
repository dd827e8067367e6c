"""Two op streams lined up: which ops of one run match which of the other, and where the streams first part.

Two runs of one step usually execute the same ops in the same order. When they do not (a branch taken on one side
only, an op inserted or left out, one trace cut short), :func:`align` finds where the streams part and where they
agree again, in time linear in their length (``difflib`` is quadratic on streams this repetitive: 28 s on 20000
ops of a network's repeated layers).
"""

from __future__ import annotations

from typing import Any

RESYNC_WINDOW = 4096  # ops searched ahead on each side for where two parted op streams agree again
RESYNC_RUN = 8  # that many equal ops in a row: the streams agree again
MAX_REJOINS = 1000  # partings followed; past them the rest goes uncompared


def align(keys_a: list[Any], keys_b: list[Any]) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
    """Line two op streams up: the index pairs of the ops that match, and where the streams first part (None: never).

    The streams are walked in lockstep; where they part, the fewest ops are skipped on each side after which
    ``RESYNC_RUN`` ops in a row agree (an op inserted, an op left out), searched ``RESYNC_WINDOW`` ops ahead on each
    side. Linear in the length of the streams (``difflib`` is quadratic on streams this repetitive).
    """
    pairs: list[tuple[int, int]] = []
    parted = None
    i = j = rejoined = 0
    while i < len(keys_a) and j < len(keys_b):
        if keys_a[i] == keys_b[j]:
            pairs.append((i, j))
            i, j = i + 1, j + 1
            continue
        if parted is None:
            parted = (i, j)
        skip = _rejoin(keys_a, keys_b, i, j) if rejoined < MAX_REJOINS else None
        if skip is None:
            break
        i, j = i + skip[0], j + skip[1]
        rejoined += 1
    if parted is None and (i < len(keys_a) or j < len(keys_b)):
        parted = (i, j)  # one stream ends first
    return pairs, parted


def _rejoin(keys_a: list[Any], keys_b: list[Any], i: int, j: int) -> tuple[int, int] | None:
    """The fewest ops ``(da, db)`` to skip after which the streams agree again; None within the window."""
    first_at: dict[tuple[Any, ...], int] = {}
    for db in range(min(RESYNC_WINDOW, len(keys_b) - j)):
        first_at.setdefault(tuple(keys_b[j + db:j + db + RESYNC_RUN]), db)
    best = None
    for da in range(min(RESYNC_WINDOW, len(keys_a) - i)):
        if best is not None and da >= best[0] + best[1]:
            break
        db = first_at.get(tuple(keys_a[i + da:i + da + RESYNC_RUN]))
        if db is not None and (best is None or da + db < best[0] + best[1]):
            best = (da, db)
    return best
