"""sha256 of one file, read in large blocks (the wheel cache, bundles and single-file inputs use it).

Trees are hashed by envkit.run.snapshot, which adds threads and stat caching on top of the same idea.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_file(path: Path, advance: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file; ``advance(n)`` is called with each block's size (progress bars)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            if advance:
                advance(len(chunk))
    return h.hexdigest()
