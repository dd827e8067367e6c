"""Where envkit may read a wheel from this host's disk.

A lock names each wheel's URL, but a lock may come from someone else, and a ``file://`` URL (or a bare path) in it
would make ``envkit build`` read any file the user can read: a hash oracle on local files, and a build that hangs
on ``/dev/zero``. So a local URL in a lock is a hint, never a must:

- A wheel is read from local disk only where this host's own configuration points: the find-links folders and
  ``file://`` indexes of its pip configuration, and the sources of a spec locked on this host (``envkit lock``
  remembers them in the cache, under the lock's content hash: :func:`remember`).
- There the wheel is looked up by its file name (already checked to be a bare wheel name), as pip would look it
  up, not at the path the lock gives.
- ``ENVKIT_ALLOW_FILE_URLS=1`` is the opt-in for a lock you trust: its local URLs are then read as given.
- Either way only a regular file named like the wheel is read, and it enters the cache only if its sha256 is the
  pinned one.

Remote URLs (https, http) are fetched as before; the hash is what makes them safe.
"""

from __future__ import annotations

import functools
import json
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name

from envkit.atomic import atomic_write
from envkit.errors import FetchError
from envkit.lock.indexes import Anchors
from envkit.settings import allow_file_urls, cache_dir

if TYPE_CHECKING:
    from envkit.lock.model import Lockfile, PinnedPackage
    from envkit.lock.resolver import Sources

ALLOW_HINT = ("envkit reads local wheels only from this host's pip configuration and the sources of specs locked "
              "here; if you trust this lock, set ENVKIT_ALLOW_FILE_URLS=1 to read its local paths as given")


def local_path(url: str) -> Path | None:
    """The local path a wheel URL names (``file://`` or a bare path), or None for a remote URL."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "":
        return Path(url)
    return None


@dataclass(frozen=True)
class LocalSources:
    """Local folders trusted to hold wheels, and whether a lock's own local paths may be read (the opt-in)."""

    find_links: tuple[Path, ...] = ()
    indexes: tuple[Path, ...] = ()  # roots of local PEP 503 simple indexes (``<root>/<project>/index.html``)
    allow_any: bool = False
    include_host: bool = False  # also this host's pip configuration, read when first needed
    described: tuple[str, ...] = field(default=(), compare=False)  # what they are, for error messages

    @classmethod
    def from_urls(cls, find_links: list[str] | tuple[str, ...], indexes: list[str] | tuple[str, ...]) -> LocalSources:
        """The local ones among find-links entries and index URLs (remote ones are left to the URL in the lock)."""
        return cls(find_links=tuple(p for p in map(local_path, find_links) if p is not None),
                   indexes=tuple(p for p in map(local_path, indexes) if p is not None))

    @classmethod
    def for_lock(cls, lock: Lockfile) -> LocalSources:
        """What ``envkit build`` trusts for ``lock``: this host's pip configuration, the lock's own sources if it
        was made on this host, and the ``ENVKIT_ALLOW_FILE_URLS`` opt-in."""
        made_here = remembered(lock.content_sha256)
        described = ["this host's pip configuration"] + (["the sources it was locked with here"] if made_here else [])
        return replace(made_here or cls(), include_host=True, allow_any=allow_file_urls(),
                       described=tuple(described))

    def all(self) -> LocalSources:
        """These sources with the host's pip configuration added (when ``include_host``)."""
        if not self.include_host:
            return self
        host = _host_sources()
        return replace(self, find_links=self.find_links + host.find_links, indexes=self.indexes + host.indexes,
                       include_host=False)

    def locate(self, filename: str, project: str) -> Path | None:
        """The file these sources offer under ``filename``, or None."""
        sources = self.all()
        for folder in sources.find_links:
            candidate = folder / filename
            if candidate.is_file():
                return candidate
        for root in sources.indexes:
            found = _from_index(root, filename, project)
            if found is not None:
                return found
        return None

    def resolve(self, pkg: PinnedPackage, lock_path: Path) -> Path:
        """Where to read ``pkg``, whose lock names the local ``lock_path``.

        Raises:
            FetchError: the lock's path is not the wheel's file name, or no trusted source offers the wheel.
        """
        if lock_path.name != pkg.filename:
            raise FetchError(f"cannot fetch {pkg.filename}: the lock names the local file {lock_path}, which is not "
                             "that wheel", hint="the lockfile was altered; do not build it")
        if self.allow_any:
            return lock_path
        found = self.locate(pkg.filename, pkg.name)
        if found is None:
            where = " or ".join(self.described) or "the configured local sources"
            raise FetchError(f"cannot fetch {pkg.filename}: the lock names the local file {lock_path}, and "
                             f"{where} do not offer it", hint=ALLOW_HINT)
        return found


def remember(lock: Lockfile, sources: Sources) -> None:
    """Record that ``lock`` was made on this host from ``sources``: their local folders (which the lock itself does
    not name) are where a later build here may read wheels from."""
    local = LocalSources.from_urls(list(sources.find_links),
                                   ([sources.index_url] if sources.index_url else []) + list(sources.indexes))
    if not (local.find_links or local.indexes):
        return
    data = {"find_links": [str(p) for p in local.find_links], "indexes": [str(p) for p in local.indexes]}
    path = _memory(lock.content_sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1) + "\n")


def remembered(content_sha256: str) -> LocalSources | None:
    """The local sources of a lock made on this host, or None (a lock from elsewhere, or one without any)."""
    try:
        data = json.loads(_memory(content_sha256).read_text(encoding="utf-8"))
        return LocalSources(find_links=tuple(Path(p) for p in data["find_links"]),
                            indexes=tuple(Path(p) for p in data["indexes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _memory(content_sha256: str) -> Path:
    # The name is the lock's content hash, which the parser checked; anything else cannot name a file here.
    safe = content_sha256 if len(content_sha256) == 64 and all(c in "0123456789abcdef" for c in content_sha256) \
        else "invalid"
    return cache_dir() / "locks-made-here" / f"{safe}.json"


@functools.cache
def _host_sources() -> LocalSources:
    """The local find-links folders and indexes of this host's pip configuration (read once per process)."""
    from envkit.lock.pipconfig import host_pip_sources

    host = host_pip_sources()
    return LocalSources.from_urls(host.find_links, ((host.index_url,) if host.index_url else ()) + host.indexes)


def _from_index(root: Path, filename: str, project: str) -> Path | None:
    """The local file a simple index's page for ``project`` links under ``filename`` (PEP 503), or None."""
    page = root / canonicalize_name(project) / "index.html"
    try:
        text = page.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    parser = Anchors()
    parser.feed(text)
    for href in parser.hrefs:
        target = urllib.parse.urljoin(page.as_uri(), href.split("#", 1)[0])
        path = local_path(target)
        if path is not None and path.name == filename and path.is_file():
            return path
    return None
