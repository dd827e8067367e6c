"""File manifests: a tree hashed into ``{path, size, sha256[, link]}`` entries, and the one comparison of two of them.

Used on both sides of a run: the project snapshot and the outputs (``envkit.run``), the record's code, inputs and
outputs (``envkit.store``), replay's verdict and ``envkit diff``. It imports only the standard library, pathspec and
envkit's errors, so every package may import it.

Hashing runs in a small thread pool with 1 MiB reads: hashlib releases the GIL, so several files hash at once, and one
big file hashes at sha256's single-core speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from envkit.errors import SnapshotError

_CHUNK = 1 << 20  # big reads: per-call overhead vanishes and hashlib drops the GIL for the whole chunk
_WORKERS = max(2, min(8, 2 * (os.cpu_count() or 1)))

Progress = Callable[[int], None]  # called with the bytes just hashed, from worker threads
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a manifest. A symlink is hashed by its target text, which ``link`` holds."""

    path: str
    size: int
    sha256: str
    link: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256}
        if self.link is not None:
            data["link"] = self.link
        return data


def is_safe_relpath(path: object) -> bool:
    """Whether ``path`` is a relative POSIX path that stays below its root: no ``..``, no empty or ``.`` parts, no
    NUL, no backslash tricks. Every manifest path read from a record or bundle is checked with this."""
    if not isinstance(path, str) or not path or "\0" in path or path.startswith("/") or "\\" in path:
        return False
    parts = path.split("/")
    return all(part not in ("", ".", "..") for part in parts)


@dataclass
class Manifest:
    """Entries sorted by path. ``stats`` remembers each file's inode, size, mtime and ctime as hashed, so that a
    later :func:`manifest` of the same tree can skip files the job did not touch (it is not serialised)."""

    entries: list[ManifestEntry]
    stats: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        """The manifest's own hash: sha256 of its canonical JSON (sorted by path, no whitespace)."""
        return manifest_sha256(self.entries)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def to_list(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.entries]

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.entries}


@dataclass(frozen=True)
class EntryChange:
    """One path whose entry differs between two manifests: ``a`` and ``b`` are the entries (None where absent)."""

    path: str
    a: ManifestEntry | None
    b: ManifestEntry | None

    @property
    def kind(self) -> str:
        """``differs`` (in both, other content), ``missing`` (in ``a`` only) or ``extra`` (in ``b`` only)."""
        return "differs" if self.a is not None and self.b is not None else ("missing" if self.a else "extra")

    @property
    def sha_a(self) -> str | None:
        return self.a.sha256 if self.a is not None else None

    @property
    def sha_b(self) -> str | None:
        return self.b.sha256 if self.b is not None else None


def compare(a: Iterable[ManifestEntry], b: Iterable[ManifestEntry]) -> list[EntryChange]:
    """Every path whose entry differs between two entry lists (content, size or link target), sorted by path.

    The one comparison of manifests: a run's outputs (the snapshot against the tree after the job), replay's verdict
    and ``envkit diff`` all use it.
    """
    old = {e.path: e for e in a}
    new = {e.path: e for e in b}
    return [EntryChange(p, old.get(p), new.get(p)) for p in sorted(old.keys() | new.keys()) if old.get(p) != new.get(p)]


def outputs_between(before: Manifest, after: Manifest) -> list[ManifestEntry]:
    """Files created or changed between two manifests of one tree, sorted by path: the outputs of a run."""
    return [c.b for c in compare(before.entries, after.entries) if c.b is not None]


def manifest_sha256(entries: Iterable[ManifestEntry]) -> str:
    """sha256 of the canonical JSON of entries sorted by path."""
    ordered = sorted((e.to_dict() for e in entries), key=lambda d: d["path"])
    text = json.dumps(ordered, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def manifest(root: Path, exclude: Iterable[str] = (), previous: Manifest | None = None,
             on_progress: Progress | None = None) -> Manifest:
    """Hash every file under ``root``; symlinks are recorded, not followed; other special files are skipped.

    Args:
        root: the tree to hash.
        exclude: gitignore-style patterns of paths to leave out (``"__pycache__/"``, ``"/logs/"``).
        previous: a manifest of the same tree (the snapshot); files whose inode, size, mtime and ctime are unchanged
            keep their entry instead of being read again. ctime cannot be set from user space, so a job cannot hide a
            change by restoring an mtime.
        on_progress: called with byte counts as files are hashed (from worker threads).
    """
    root = Path(root)
    spec = _spec(exclude)
    names = _walk_all(root, "", spec)
    old = previous.by_path() if previous is not None else {}
    old_stats = previous.stats if previous is not None else {}

    def one(name: str) -> tuple[ManifestEntry, tuple[int, ...]] | None:
        if name in old:
            try:
                key = stat_key(os.lstat(root / name))
            except OSError:
                key = None
            if key is not None and old_stats.get(name) == key:
                return old[name], key
        return hash_path(root / name, name, None, on_progress)

    return collect(parallel(one, names))


def _spec(patterns: Iterable[str]) -> Any:
    patterns = list(patterns)
    if not patterns:
        return None
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _walk_all(root: Path, rel: str, spec: Any) -> list[str]:
    names: list[str] = []
    try:
        entries = list(os.scandir(root / rel if rel else root))
    except OSError as exc:
        raise SnapshotError(f"cannot list {root / rel}: {exc.strerror}") from exc
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if spec is not None and spec.match_file(path + "/" if is_dir else path):
            continue
        if is_dir:
            names.extend(_walk_all(root, path, spec))
        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
            names.append(path)
    return names


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_local = threading.local()


def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_CHUNK))
    return buf


def hash_path(src: Path, name: str, dst: Path | None,
              on_progress: Progress | None) -> tuple[ManifestEntry, tuple[int, ...]] | None:
    """Hash one file (copying it to ``dst`` on the way when given); None for special files.

    Raises:
        SnapshotError: the file cannot be read, or ``dst`` cannot be written.
    """
    try:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            raw = os.fsencode(target)
            if dst is not None:
                os.symlink(target, dst)
            return ManifestEntry(name, len(raw), hashlib.sha256(raw).hexdigest(), link=target), stat_key(st)
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha256()
        size = 0
        buf = _buffer()
        with open(src, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            out = None if dst is None else open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb",
                                                buffering=0)
            try:
                while n := f.readinto(buf):
                    view = buf[:n]
                    digest.update(view)
                    size += n
                    if out is not None:
                        while view:
                            view = view[out.write(view):]
                    if on_progress is not None:
                        on_progress(n)
            finally:
                if out is not None:
                    out.close()
        if dst is not None:
            # Permission bits only: a setuid or setgid bit never survives a copy envkit makes.
            os.chmod(dst, stat.S_IMODE(st.st_mode) & 0o777)
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            st = os.stat(dst)
        return ManifestEntry(name, size, digest.hexdigest()), stat_key(st)
    except OSError as exc:
        what = f"copy {src} to {dst}" if dst is not None else f"hash {src}"
        raise SnapshotError(f"cannot {what}: {exc.strerror or exc}",
                            hint="fix the file's permissions, or leave it out with .envkitignore") from exc


def collect(results: list[tuple[ManifestEntry, tuple[int, ...]] | None]) -> Manifest:
    entries, stats = [], {}
    for item in results:
        if item is not None:
            entries.append(item[0])
            stats[item[0].path] = item[1]
    entries.sort(key=lambda e: e.path)
    return Manifest(entries, stats)


def parallel(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(x) for x in items]`` on a few threads that pull the next item under a lock (no per-item futures: with
    many small files their overhead would cost more than the hashing)."""
    results: list[Any] = [None] * len(items)
    if len(items) < 2:
        return [fn(x) for x in items]
    work = iter(enumerate(items))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while not errors:
            with lock:
                nxt = next(work, None)
            if nxt is None:
                return
            try:
                results[nxt[0]] = fn(nxt[1])
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread below
                errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(_WORKERS, len(items)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
