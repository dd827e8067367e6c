"""The content-addressed wheel cache: fetch each pinned wheel once, verify it against the lock every time.

Layout: ``<cache>/wheels/sha256/<h[:2]>/<h>/<filename>``. A file enters the cache only after its sha256 matched
(downloaded to a temp file, hashed, renamed), and a cached file is hashed again before each build, so a wheel
tampered with in the cache is refused and named.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from envkit.atomic import atomic_output
from envkit.errors import FetchError, HashMismatchError
from envkit.hashing import CHUNK, sha256_file
from envkit.lock.model import PinnedPackage

Progress = Callable[[str, int], Callable[[int], None]]


def cache_path(root: Path, pkg: PinnedPackage) -> Path:
    return root / "sha256" / pkg.sha256[:2] / pkg.sha256 / pkg.filename


def ensure_wheels(packages: tuple[PinnedPackage, ...], root: Path, progress: Progress | None = None) -> list[Path]:
    """Every pinned wheel in the cache, verified; returns their cache paths in lock order.

    Raises:
        HashMismatchError: a cached or fetched file does not match the lock (the file is named).
        FetchError: a wheel cannot be fetched from its recorded URL.
    """
    paths = []
    for pkg in packages:
        path = cache_path(root, pkg)
        if path.is_file():
            advance = progress(f"verify {pkg.filename}", path.stat().st_size) if progress else None
            actual = sha256_file(path, advance)
            if actual != pkg.sha256:
                raise HashMismatchError(
                    f"cached wheel {path} has sha256 {actual[:16]}..., the lock pins {pkg.sha256[:16]}...",
                    hint=f"the cache was altered; delete the file (rm '{path}') and build again to fetch it afresh",
                )
        else:
            _fetch(pkg, path, progress)
        paths.append(path)
    return paths


def _fetch(pkg: PinnedPackage, dest: Path, progress: Progress | None) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(dest) as out:  # the file enters the cache only whole and with the pinned hash
        h = hashlib.sha256()
        for chunk in _read_url(pkg, progress):
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != pkg.sha256:
            raise HashMismatchError(
                f"{pkg.filename} from {pkg.url} has sha256 {h.hexdigest()[:16]}..., the lock pins {pkg.sha256[:16]}...",
                hint="the file at the source changed since the lock was made; re-lock only if you trust the new file",
            )


def _read_url(pkg: PinnedPackage, progress: Progress | None):
    url = pkg.url
    parsed = urllib.parse.urlparse(url)
    try:
        if parsed.scheme in ("", "file"):
            src = Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url)
            size = src.stat().st_size
            advance = progress(f"copy {pkg.filename}", size) if progress else None
            with src.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    if advance:
                        advance(len(chunk))
                    yield chunk
            return
        with urllib.request.urlopen(url, timeout=120) as resp:  # noqa: S310 - https URLs from the lock
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
