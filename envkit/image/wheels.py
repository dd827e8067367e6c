"""The content-addressed wheel cache: fetch each pinned wheel once, verify it against the lock every time.

Layout: ``<cache>/wheels/sha256/<h[:2]>/<h>/<filename>``. A file enters the cache only after its sha256 matched
(downloaded to a temp file, hashed, renamed), and a cached file is hashed again before each build, so a wheel
tampered with in the cache is refused and named. The file name comes from a lock, so the path it makes is checked to
stay in its own folder of the cache, and a lock's local URL is read only as :mod:`envkit.lock.localsources` allows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from envkit.atomic import atomic_output
from envkit.errors import FetchError, HashMismatchError, LockfileError
from envkit.hashing import CHUNK, sha256_file
from envkit.lock.localsources import LocalSources, local_path
from envkit.lock.model import PinnedPackage
from envkit.lock.values import SHA256, shown

Progress = Callable[[str, int], Callable[[int], None]]


def cache_path(root: Path, pkg: PinnedPackage) -> Path:
    """Where ``pkg`` lives in the cache under ``root``.

    Raises:
        LockfileError: the path would not be a file directly in the wheel's own folder of the cache (a file name
            with a path in it: the parser refuses those, this is the second check for packages made in code).
    """
    folder = Path(root) / "sha256" / pkg.sha256[:2] / pkg.sha256
    path = folder / pkg.filename
    resolved_folder = folder.resolve()
    if (not SHA256.fullmatch(pkg.sha256) or path.name != pkg.filename or path.resolve().parent != resolved_folder
            or not resolved_folder.is_relative_to(Path(root).resolve())):
        raise LockfileError(f"wheel file name {shown(pkg.filename)} would be written outside the wheel cache",
                            hint="the lockfile was altered; do not build it")
    return path


def ensure_wheels(packages: tuple[PinnedPackage, ...], root: Path, progress: Progress | None = None,
                  sources: LocalSources | None = None) -> list[Path]:
    """Every pinned wheel in the cache, verified; returns their cache paths in lock order.

    Args:
        sources: where a lock's local URLs may be read (default: this host's pip configuration and the
            ``ENVKIT_ALLOW_FILE_URLS`` opt-in; the builder passes :meth:`LocalSources.for_lock`).

    Raises:
        LockfileError: a wheel's cache path would leave the cache.
        HashMismatchError: a cached or fetched file does not match the lock (the file is named).
        FetchError: a wheel cannot be fetched from its recorded URL, or its local URL is not allowed.
    """
    from envkit.settings import allow_file_urls

    sources = sources or LocalSources(include_host=True, allow_any=allow_file_urls(),
                                      described=("this host's pip configuration",))
    paths = [cache_path(root, pkg) for pkg in packages]  # all checked before anything is written
    for pkg, path in zip(packages, paths, strict=True):
        if path.is_file():
            advance = progress(f"verify {pkg.filename}", path.stat().st_size) if progress else None
            actual = sha256_file(path, advance)
            if actual != pkg.sha256:
                raise HashMismatchError(
                    f"cached wheel {path} has sha256 {actual[:16]}..., the lock pins {pkg.sha256[:16]}...",
                    hint=f"the cache was altered; delete the file (rm '{path}') and build again to fetch it afresh",
                )
        else:
            _fetch(pkg, path, progress, sources)
    return paths


def _fetch(pkg: PinnedPackage, dest: Path, progress: Progress | None, sources: LocalSources) -> None:
    local = local_path(pkg.url)
    if local is None and urllib.parse.urlsplit(pkg.url).scheme not in ("https", "http"):
        raise FetchError(f"cannot fetch {pkg.filename}: {shown(pkg.url)} is not an https, http or file URL")
    chunks = _read_local(pkg, sources.resolve(pkg, local), progress) if local is not None \
        else _read_remote(pkg, progress)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest) as out:  # the file enters the cache only whole and with the pinned hash
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != pkg.sha256:
            raise HashMismatchError(
                f"{pkg.filename} from {pkg.url} has sha256 {h.hexdigest()[:16]}..., the lock pins {pkg.sha256[:16]}...",
                hint="the file at the source changed since the lock was made; re-lock only if you trust the new file",
            )


def _read_local(pkg: PinnedPackage, src: Path, progress: Progress | None) -> Iterator[bytes]:
    try:
        # Non-blocking open, then fstat: a FIFO or a device under a wheel's name is refused, never read or waited on.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FetchError(f"cannot fetch {pkg.filename} from {src}: {exc.strerror}",
                         hint="check that the source recorded in the lock is reachable from this host") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"cannot fetch {pkg.filename} from {src}: not a regular file")
        advance = progress(f"copy {pkg.filename}", info.st_size) if progress else None
        try:
            while chunk := fh.read(CHUNK):
                if advance:
                    advance(len(chunk))
                yield chunk
        except OSError as exc:
            raise FetchError(f"cannot fetch {pkg.filename} from {src}: {exc.strerror}") from exc


def _read_remote(pkg: PinnedPackage, progress: Progress | None) -> Iterator[bytes]:
    url = pkg.url
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - http(s) only: the parser checked it
            size = int(resp.headers.get("Content-Length") or 0)
            advance = progress(f"download {pkg.filename}", size) if progress else None
            while chunk := resp.read(CHUNK):
                if advance:
                    advance(len(chunk))
                yield chunk
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot fetch {pkg.filename} from {url}: {getattr(exc, 'reason', None) or exc}",
                         hint="check that the source recorded in the lock is reachable from this host") from exc


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link a cached wheel into a build context (copy across file systems)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
