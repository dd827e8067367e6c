"""Pinned .debs by content: a content-addressed cache, filled from whichever source still has each file.

Layout: ``<cache>/debs/sha256/<h[:2]>/<h>/<file>.deb``. A file enters the cache only after its sha256 matched its
pin (downloaded to a temp file, hashed, renamed), and a cached file is hashed again each time it is used.
Sources, in order: the cache, the host's apt cache (/var/cache/apt/archives), then each mirror URL + pool path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from envkit.errors import FetchError, HashMismatchError
from envkit.hashing import CHUNK, sha256_file
from envkit.lock.debian import deb_cache_path
from envkit.lock.model import DebPin

APT_ARCHIVES = Path("/var/cache/apt/archives")
FETCH_TIMEOUT = 60
FETCH_THREADS = 4  # a few connections at once: a base is ~130 small files, latency bound


def fetch_debs(pins: Sequence[DebPin], cache_dir: Path, mirrors: Sequence[str] = (),
               local_dirs: Sequence[Path] = (APT_ARCHIVES,)) -> list[Path]:
    """Every pinned .deb in the cache, verified; returns their cache paths in the order of ``pins``.

    Args:
        pins: the .debs.
        cache_dir: envkit's cache root.
        mirrors: mirror root URLs (``http://deb.debian.org/debian``); each pin's pool path is appended.
        local_dirs: folders of .debs to take a file from before the network (apt's own cache).

    Raises:
        HashMismatchError: a cached file, or the only copy found, does not match its pin (both hashes named).
        FetchError: no source has the file (the package, version and every place tried are named).
    """
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return list(pool.map(lambda pin: _ensure(pin, cache_dir, mirrors, local_dirs), pins))


def _ensure(pin: DebPin, cache_dir: Path, mirrors: Sequence[str], local_dirs: Sequence[Path]) -> Path:
    dest = deb_cache_path(cache_dir, pin)
    if dest.is_file():
        actual = sha256_file(dest)
        if actual == pin.sha256:
            return dest
        raise HashMismatchError(f"cached {dest.name} has sha256 {actual}, its pin is {pin.sha256}",
                                hint=f"the cache was altered; delete it (rm '{dest}') to fetch it afresh")
    tried: list[str] = [str(dest.parent)]
    mismatches: list[str] = []
    for folder in local_dirs:
        for candidate in _local_names(folder, pin):
            if not candidate.is_file():
                continue
            tried.append(str(candidate))
            if _copy_verified(candidate, dest, pin, mismatches):
                return dest
    if not local_dirs:
        tried.append("(no local folders)")
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + urllib.parse.quote(pin.filename)
        try:
            if _download_verified(url, dest, pin, mismatches):
                return dest
            tried.append(url)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "code", None) or getattr(exc, "reason", None) or exc
            tried.append(f"{url} ({reason})")
    if mismatches:
        raise HashMismatchError(f"{Path(pin.filename).name}: expected sha256 {pin.sha256}, found "
                                f"{'; '.join(mismatches)}", hint="a source serves another file under this name")
    raise FetchError(f"Debian package {pin.label} is on no source; tried: {', '.join(tried)}",
                     hint="the mirrors dropped this version: name one that keeps it in ENVKIT_DEB_MIRRORS (e.g. a "
                          "snapshot.debian.org URL of the day the lock was made), or put the .deb into "
                          "/var/cache/apt/archives")


def _local_names(folder: Path, pin: DebPin) -> list[Path]:
    """apt names files name_version_arch.deb with the epoch's ':' as '%3a'; the pool keeps its own name."""
    apt_name = f"{pin.name}_{pin.version.replace(':', '%3a')}_{pin.arch}.deb"
    return list(dict.fromkeys([folder / apt_name, folder / Path(pin.filename).name]))


def _copy_verified(src: Path, dest: Path, pin: DebPin, mismatches: list[str]) -> bool:
    actual = sha256_file(src)
    if actual != pin.sha256:
        mismatches.append(f"{actual} in {src}")
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    return True


def _download_verified(url: str, dest: Path, pin: DebPin, mismatches: list[str]) -> bool:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=dest.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as resp:
            while chunk := resp.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != pin.sha256:
            mismatches.append(f"{h.hexdigest()} at {url}")
            return False
        os.replace(tmp_name, dest)
        return True
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
