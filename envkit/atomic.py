"""Atomic writes: a file appears whole or not at all, and its previous content survives a failed write.

The one implementation for records, lockfiles, the probe cache, the wheel cache and bundles: write a temporary file
in the target's folder, fsync it, ``os.replace`` it over the target, and fsync the folder so the rename survives a
crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_output(path: Path, durable: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` when the block ends without an exception.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; ``path`` is then untouched and no temporary file
            is left behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes | str, durable: bool = True, mode: int = 0o644) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; see :func:`atomic_output`."""
    with atomic_output(path, durable=durable, mode=mode) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that a rename into it survives a crash (best effort where the OS refuses)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
