"""The content-addressed wheel cache: each pinned wheel fetched once, by hash, from whichever source has it.

Layout: ``<cache>/wheels/sha256/<h[:2]>/<h>/<filename>``. A wheel is its file name and its sha256; the lock's URL is
only a hint. A wheel missing from the cache is looked for, in this order (:class:`WheelSources`):

1. the lock's URL (http or https; a local path only with ``ENVKIT_ALLOW_FILE_URLS=1``);
2. the spec's sources recorded in the lock (its index and find-links pages), and the local folders of a spec
   locked on this host (:mod:`envkit.lock.localsources` remembers them);
3. this host's pip configuration: its local find-links folders and indexes (found by file name, as pip would), then
   its index pages (PyPI when it names no index).

Each candidate is hashed as it is copied to a temp file, and the file enters the cache only if its sha256 is the
pinned one; the next source is tried otherwise. A cached file is hashed again before each build, so a wheel
tampered with in the cache is refused and named. The file name comes from a lock, so the path it makes is checked
to stay in its own folder of the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.atomic import atomic_output
from envkit.errors import FetchError, HashMismatchError, LockfileError
from envkit.hashing import CHUNK, sha256_file
from envkit.lock.indexes import PYPI_SIMPLE, find_in_index, find_in_page, is_remote, strip_credentials
from envkit.lock.localsources import ALLOW_HINT, LocalSources, local_path
from envkit.lock.model import PinnedPackage
from envkit.lock.values import SHA256, shown

if TYPE_CHECKING:
    from envkit.lock.model import Lockfile

Progress = Callable[[str, int], Callable[[int], None]]
DOWNLOAD_TIMEOUT = 120


@dataclass(frozen=True)
class WheelSources:
    """Where a wheel is looked for, in order: the lock's URL, the spec's sources, the host's pip configuration."""

    local: LocalSources = field(default_factory=LocalSources)  # trusted local folders (spec's here, then host's)
    spec_indexes: tuple[str, ...] = ()
    spec_pages: tuple[str, ...] = ()  # remote find-links pages
    host_indexes: tuple[str, ...] = ()

    @classmethod
    def for_lock(cls, lock: Lockfile) -> WheelSources:
        """What ``envkit build`` uses for ``lock`` on this host."""
        from envkit.lock.pipconfig import host_pip_sources

        remote = [u for u in lock.sources.get("index_url", []) + lock.sources.get("indexes", []) if is_remote(u)]
        pages = [u for u in lock.sources.get("find_links", []) if is_remote(u)]
        host = host_pip_sources()
        host_indexes = [host.index_url or PYPI_SIMPLE, *host.indexes]
        return cls(local=LocalSources.for_lock(lock), spec_indexes=tuple(remote), spec_pages=tuple(pages),
                   host_indexes=tuple(u for u in dict.fromkeys(host_indexes) if is_remote(u) and u not in remote))


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
                  sources: LocalSources | WheelSources | None = None) -> list[Path]:
    """Every pinned wheel in the cache, verified; returns their cache paths in lock order.

    Args:
        sources: where to look (the builder passes :meth:`WheelSources.for_lock`); a bare :class:`LocalSources`
            means those local folders only, after the lock's URL.

    Raises:
        LockfileError: a wheel's cache path would leave the cache.
        HashMismatchError: a cached file does not match the lock, or every source that has the file serves other
            bytes (the file and both hashes are named).
        FetchError: no source has the wheel (it is named, with every place tried).
    """
    from envkit.settings import allow_file_urls

    if sources is None:
        sources = WheelSources(local=LocalSources(include_host=True, allow_any=allow_file_urls(),
                                                  described=("this host's pip configuration",)))
    elif isinstance(sources, LocalSources):
        sources = WheelSources(local=sources)
    paths = [cache_path(root, pkg) for pkg in packages]  # all checked before anything is written
    for pkg, path in zip(packages, paths, strict=True):
        if path.is_file():
            advance = progress(f"verify {pkg.filename}", path.stat().st_size) if progress else None
            actual = sha256_file(path, advance)
            if actual != pkg.sha256:
                raise HashMismatchError(
                    f"cached wheel {path} has sha256 {actual}, the lock pins {pkg.sha256}",
                    hint=f"the cache was altered; delete the file (rm '{path}') and build again to fetch it afresh",
                )
        else:
            _fetch(pkg, path, progress, sources)
    return paths


Opener = Callable[[], Iterator[bytes]]


def _candidates(pkg: PinnedPackage, sources: WheelSources, progress: Progress | None,
                tried: list[str]) -> Iterator[tuple[str, Opener]]:
    """(where, open) for each place that may have ``pkg``, in order; lookups that fail are noted in ``tried``."""
    if pkg.url:
        local = local_path(pkg.url)
        if local is None and is_remote(pkg.url):
            yield strip_credentials(pkg.url), lambda: _read_remote(pkg, pkg.url, progress)
        elif local is not None and sources.local.allow_any:
            if local.name != pkg.filename:
                raise FetchError(f"cannot fetch {pkg.filename}: the lock names the local file {local}, which is not "
                                 "that wheel", hint="the lockfile was altered; do not build it")
            yield str(local), lambda: _read_local(pkg, local, progress)
        elif local is not None:
            tried.append(f"{local} (a local path in the lock: read only with ENVKIT_ALLOW_FILE_URLS=1)")
    spec_local = LocalSources(find_links=sources.local.find_links, indexes=sources.local.indexes)
    found = spec_local.locate(pkg.filename, pkg.name)
    if found is not None:
        yield str(found), lambda: _read_local(pkg, found, progress)
    yield from _remote(pkg, sources.spec_indexes, sources.spec_pages, progress, tried)
    if sources.local.include_host:
        host_local = LocalSources(include_host=True).locate(pkg.filename, pkg.name)
        if host_local is not None:
            yield str(host_local), lambda: _read_local(pkg, host_local, progress)
    yield from _remote(pkg, sources.host_indexes, (), progress, tried)


def _remote(pkg: PinnedPackage, indexes: tuple[str, ...], pages: tuple[str, ...], progress: Progress | None,
            tried: list[str]) -> Iterator[tuple[str, Opener]]:
    for where, lookup in [*((i, lambda i=i: find_in_index(i, pkg.name, pkg.filename)) for i in indexes),
                          *((p, lambda p=p: find_in_page(p, pkg.filename)) for p in pages)]:
        try:
            hit = lookup()
        except FetchError as exc:
            tried.append(exc.message)
            continue
        if hit is None:
            tried.append(f"{strip_credentials(where)} (does not list it)")
        elif hit.sha256 is not None and hit.sha256 != pkg.sha256:
            tried.append(f"{strip_credentials(hit.url)} (lists sha256 {hit.sha256})")
        elif hit.url != pkg.url:
            yield strip_credentials(hit.url), lambda url=hit.url: _read_remote(pkg, url, progress)


def _fetch(pkg: PinnedPackage, dest: Path, progress: Progress | None, sources: WheelSources) -> None:
    tried: list[str] = []
    mismatches: list[str] = []
    dest.parent.mkdir(parents=True, exist_ok=True)
    for where, open_ in _candidates(pkg, sources, progress, tried):
        try:
            with atomic_output(dest) as out:  # the file enters the cache only whole and with the pinned hash
                h = hashlib.sha256()
                for chunk in open_():
                    h.update(chunk)
                    out.write(chunk)
                if h.hexdigest() != pkg.sha256:
                    raise _Mismatch(h.hexdigest())
            return
        except _Mismatch as exc:
            mismatches.append(f"{exc.args[0]} from {where}")
        except FetchError as exc:
            tried.append(exc.message)
    if mismatches:
        raise HashMismatchError(
            f"{pkg.filename}: the lock pins sha256 {pkg.sha256}, found {'; '.join(mismatches)}",
            hint="a source serves other bytes under this name; re-lock only if you trust the new file",
        )
    local_named = any("ENVKIT_ALLOW_FILE_URLS" in t for t in tried)
    raise FetchError(f"no source has {pkg.filename} (sha256 {pkg.sha256[:16]}...); tried: {'; '.join(tried)}",
                     hint=ALLOW_HINT if local_named else "put the wheel in a find-links folder of this host's pip "
                     "configuration, or point pip's index-url at an index that has it")


class _Mismatch(Exception):
    """A candidate's bytes hash to something else (its sha256 in args[0])."""


def _read_local(pkg: PinnedPackage, src: Path, progress: Progress | None) -> Iterator[bytes]:
    try:
        # Non-blocking open, then fstat: a FIFO or a device under a wheel's name is refused, never read or waited on.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FetchError(f"{src} ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise FetchError(f"{src} (not a regular file)")
        advance = progress(f"copy {pkg.filename}", info.st_size) if progress else None
        try:
            while chunk := fh.read(CHUNK):
                if advance:
                    advance(len(chunk))
                yield chunk
        except OSError as exc:
            raise FetchError(f"{src} ({exc.strerror})") from exc


def _read_remote(pkg: PinnedPackage, url: str, progress: Progress | None) -> Iterator[bytes]:
    shown_url = strip_credentials(url)
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise FetchError(f"{shown(shown_url)} (not an https or http URL)")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as resp:  # noqa: S310 - http(s) only
            size = int(resp.headers.get("Content-Length") or 0)
            advance = progress(f"download {pkg.filename}", size) if progress else None
            while chunk := resp.read(CHUNK):
                if advance:
                    advance(len(chunk))
                yield chunk
    except (OSError, ValueError) as exc:
        raise FetchError(f"{shown_url} ({getattr(exc, 'code', None) or getattr(exc, 'reason', None) or exc})") \
            from exc


def link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link a cached wheel into a build folder (copy across file systems)."""
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)
