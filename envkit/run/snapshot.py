"""The project snapshot and file manifests: what the job saw, what it changed.

A run works on a copy of the project folder (:func:`snapshot`), listed the way git would list it
(:func:`list_project_files`: ``.gitignore`` and ``.envkitignore`` respected, ``.git/`` and ``.envkit/`` never copied).
Manifests (:func:`manifest`) hash a tree into ``{path, size, sha256}`` entries; :func:`diff_manifests` of the snapshot
against the tree after the job gives the run's outputs. Hashing runs in a small thread pool with 1 MiB reads:
hashlib releases the GIL, so several files hash at once, and one big file hashes at sha256's single-core speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from envkit.errors import SnapshotError
from envkit.run.ignore import IgnoreRules

ENVKITIGNORE = ".envkitignore"
ALWAYS_EXCLUDED = (".git", ".envkit")  # names excluded at any depth: git's database and envkit's run store
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
class ManifestDiff:
    """What changed between two manifests; ``created`` and ``changed`` hold the new entries, ``deleted`` the old."""

    created: list[ManifestEntry]
    changed: list[ManifestEntry]
    deleted: list[ManifestEntry]

    @property
    def outputs(self) -> list[ManifestEntry]:
        """Created and changed files, sorted by path: the outputs of a run."""
        return sorted(self.created + self.changed, key=lambda e: e.path)


@dataclass(frozen=True)
class GitInfo:
    """The git state of a project. ``diff`` is ``git diff HEAD --binary`` of the project folder, decoded with
    ``surrogateescape`` (``diff.encode("utf-8", "surrogateescape")`` gives the exact bytes ``diff_sha256`` hashes)."""

    commit: str | None
    dirty: bool
    diff: str
    diff_sha256: str


def manifest_sha256(entries: Iterable[ManifestEntry]) -> str:
    """sha256 of the canonical JSON of entries sorted by path."""
    ordered = sorted((e.to_dict() for e in entries), key=lambda d: d["path"])
    text = json.dumps(ordered, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# --- listing the project -----------------------------------------------------------------------------------------
def list_project_files(root: Path, exclude_dirs: Iterable[Path] = ()) -> list[str]:
    """The files of a project that go into its snapshot, as sorted ``/``-separated paths relative to ``root``.

    In a git work tree the list is ``git ls-files -co --exclude-standard`` (tracked plus untracked-not-ignored);
    elsewhere the folder is walked honouring every ``.gitignore`` on the way. Either way the root's
    ``.envkitignore`` is applied on top, and ``.git`` and ``.envkit`` are always left out.

    Args:
        root: the project folder.
        exclude_dirs: more folders to leave out (the run store when ``ENVKIT_HOME`` points inside the project).
    """
    root = Path(root)
    listed = _git_list(root)
    files = listed if listed is not None else _walk(root, "", _gitignore(root, ""))
    rules = IgnoreRules.parse("\n".join(ALWAYS_EXCLUDED)) + _read_rules(root / ENVKITIGNORE)
    skip = []
    for d in exclude_dirs:
        try:
            skip.append(Path(d).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            continue  # not under the project
    return sorted(f for f in set(files)
                  if not rules.excludes(f) and not any(f == s or f.startswith(s + "/") for s in skip))


def _git_list(root: Path) -> list[str] | None:
    if _git(root, "rev-parse", "--is-inside-work-tree") != b"true\n":
        return None
    out = _git(root, "-c", "core.quotepath=off", "ls-files", "-z", "-co", "--exclude-standard")
    if out is None:
        return None
    files: list[str] = []
    for raw in out.split(b"\0"):
        if not raw:
            continue
        rel = os.fsdecode(raw).rstrip("/")
        try:
            mode = os.lstat(root / rel).st_mode
        except OSError:
            continue  # in the index but deleted from the work tree
        if stat.S_ISDIR(mode):
            # A nested repository or submodule: git lists the folder, the job needs its files.
            files.extend(_walk(root, rel, _gitignore(root, rel)))
        else:
            files.append(rel)
    return files


def _walk(root: Path, rel: str, rules: IgnoreRules) -> list[str]:
    """Files under ``root/rel`` not excluded by ``rules`` plus the ``.gitignore`` files met on the way."""
    files: list[str] = []
    try:
        entries = list(os.scandir(root / rel if rel else root))
    except OSError as exc:
        raise SnapshotError(f"cannot list {root / rel}: {exc.strerror}",
                            hint=f"fix its permissions or add it to {ENVKITIGNORE}") from exc
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        if entry.name in ALWAYS_EXCLUDED:
            continue
        is_dir = entry.is_dir(follow_symlinks=False)
        if rules.match(path, is_dir):
            continue  # a parent excluded stops the descent, so no re-inclusion below it, as in git
        if is_dir:
            files.extend(_walk(root, path, rules + _gitignore(root, path)))
        else:
            files.append(path)
    return files


def _gitignore(root: Path, rel: str) -> IgnoreRules:
    return _read_rules((root / rel / ".gitignore") if rel else root / ".gitignore", base=rel)


def _read_rules(path: Path, base: str = "") -> IgnoreRules:
    try:
        return IgnoreRules.parse(path.read_text(encoding="utf-8", errors="surrogateescape"), base=base)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return IgnoreRules()
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc.strerror}") from exc


def git_info(root: Path) -> GitInfo | None:
    """Commit, dirty flag and uncommitted diff of the project folder; None when it is not in a git work tree."""
    root = Path(root)
    if _git(root, "rev-parse", "--is-inside-work-tree") != b"true\n":
        return None
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    commit = head.decode().strip() if head else None
    # Without a commit yet, the diff is against the empty tree: everything staged is "uncommitted".
    base = commit or (_git(root, "hash-object", "-t", "tree", "/dev/null") or b"").decode().strip()
    diff = _git(root, "diff", "--binary", "--no-color", "--no-ext-diff", base, "--", ".") or b""
    status = _git(root, "status", "--porcelain", "-z", "--", ".")
    dirty = bool(status) or bool(diff)
    return GitInfo(commit=commit, dirty=dirty, diff=diff.decode("utf-8", "surrogateescape"),
                   diff_sha256=hashlib.sha256(diff).hexdigest())


def _git(root: Path, *args: str) -> bytes | None:
    """stdout of a git command run in ``root``, or None when git is missing or the command fails."""
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=120, check=False,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_PAGER": "cat"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


# --- hashing and copying -----------------------------------------------------------------------------------------
def snapshot(root: Path, dest: Path, files: Sequence[str] | None = None, exclude_dirs: Iterable[Path] = (),
             on_progress: Progress | None = None) -> Manifest:
    """Copy the project's files into ``dest`` (relative paths, modes and mtimes kept) and hash them on the way.

    Args:
        root: the project folder.
        dest: an empty or missing folder that becomes the job's working copy.
        files: the relative paths to copy; default :func:`list_project_files`.
        exclude_dirs: passed to :func:`list_project_files`.
        on_progress: called with byte counts as files are copied (from worker threads).

    Returns:
        The manifest of the copy; its ``sha256`` is the code hash of the run.

    Raises:
        SnapshotError: ``dest`` is not empty, or a file cannot be read or written.
    """
    root, dest = Path(root), Path(dest)
    names = list_project_files(root, exclude_dirs) if files is None else list(files)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if any(dest.iterdir()):
            raise SnapshotError(f"snapshot destination {dest} is not empty")
        for parent in sorted({os.path.dirname(n) for n in names} - {""}):
            (dest / parent).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SnapshotError(f"cannot create {dest}: {exc.strerror}") from exc

    def copy(name: str) -> tuple[ManifestEntry, tuple[int, ...]] | None:
        return _hash_path(root / name, name, dest / name, on_progress)

    return _collect(_parallel(copy, names))


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
    rules = IgnoreRules.parse("\n".join(exclude))
    names = _walk_all(root, "", rules)
    old = previous.by_path() if previous is not None else {}
    old_stats = previous.stats if previous is not None else {}

    def one(name: str) -> tuple[ManifestEntry, tuple[int, ...]] | None:
        if name in old:
            try:
                key = _stat_key(os.lstat(root / name))
            except OSError:
                key = None
            if key is not None and old_stats.get(name) == key:
                return old[name], key
        return _hash_path(root / name, name, None, on_progress)

    return _collect(_parallel(one, names))


def diff_manifests(before: Manifest, after: Manifest) -> ManifestDiff:
    """Files created, changed (size, content or link target) and deleted between two manifests."""
    old, new = before.by_path(), after.by_path()
    created = [e for p, e in sorted(new.items()) if p not in old]
    changed = [e for p, e in sorted(new.items()) if p in old and old[p] != e]
    deleted = [e for p, e in sorted(old.items()) if p not in new]
    return ManifestDiff(created=created, changed=changed, deleted=deleted)


def _walk_all(root: Path, rel: str, rules: IgnoreRules) -> list[str]:
    names: list[str] = []
    try:
        entries = list(os.scandir(root / rel if rel else root))
    except OSError as exc:
        raise SnapshotError(f"cannot list {root / rel}: {exc.strerror}") from exc
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        if rules.match(path, is_dir):
            continue
        if is_dir:
            names.extend(_walk_all(root, path, rules))
        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
            names.append(path)
    return names


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


_local = threading.local()


def _buffer() -> memoryview:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(_CHUNK))
    return buf


def _hash_path(src: Path, name: str, dst: Path | None,
               on_progress: Progress | None) -> tuple[ManifestEntry, tuple[int, ...]] | None:
    """Hash one file (copying it to ``dst`` on the way when given); None for special files."""
    try:
        st = os.lstat(src)
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(src)
            raw = os.fsencode(target)
            if dst is not None:
                os.symlink(target, dst)
            return ManifestEntry(name, len(raw), hashlib.sha256(raw).hexdigest(), link=target), _stat_key(st)
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
            os.chmod(dst, stat.S_IMODE(st.st_mode))
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
            st = os.stat(dst)
        return ManifestEntry(name, size, digest.hexdigest()), _stat_key(st)
    except OSError as exc:
        what = f"copy {src} to {dst}" if dst is not None else f"hash {src}"
        raise SnapshotError(f"cannot {what}: {exc.strerror or exc}",
                            hint=f"fix the file's permissions, or leave it out with {ENVKITIGNORE}") from exc


def _collect(results: list[tuple[ManifestEntry, tuple[int, ...]] | None]) -> Manifest:
    entries, stats = [], {}
    for item in results:
        if item is not None:
            entries.append(item[0])
            stats[item[0].path] = item[1]
    entries.sort(key=lambda e: e.path)
    return Manifest(entries, stats)


def _parallel(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
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
