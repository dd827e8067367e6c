"""The project snapshot: what the job sees of the project, and the project's git state.

A run works on a copy of the project folder (:func:`snapshot`), listed the way git would list it
(:func:`list_project`: ``.gitignore`` and ``.envkitignore`` respected, ``.git/`` and ``.envkit/`` never copied;
the patterns are matched by ``pathspec``'s ``GitIgnoreSpec``). The copy is hashed on the way into a
:class:`envkit.manifest.Manifest`, whose hash is the run's code hash.

Files that look like credentials (:data:`CREDENTIAL_PATTERNS`: ``.env``, keys, ``.netrc``, cloud credentials...)
are left out by default, even when git tracks them, because a snapshot is kept in the run folder and travels in
bundles; the listing says which were (:attr:`ProjectListing.warning`). A negated pattern in ``.envkitignore``
(``!.env``) takes one back.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import SnapshotError
from envkit.manifest import Manifest, ManifestEntry, Progress, collect, hash_path, parallel

ENVKITIGNORE = ".envkitignore"
ALWAYS_EXCLUDED = (".git", ".envkit")  # names excluded at any depth: git's database and envkit's run store
# Gitignore patterns of files that hold credentials: left out unless .envkitignore re-includes them (``!.env``).
CREDENTIAL_PATTERNS = (
    ".env", ".env.*", "!.env.example", "!.env.sample", "!.env.template", "!.env.dist", ".envrc",
    "*.pem", "*.key", "*.p12", "*.pfx",
    "id_*", "!id_*.*",  # SSH private keys (id_rsa, id_ed25519, id_work), not id_rsa.pub or id_utils.py
    ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", "credentials*.json",
    ".aws/", ".ssh/", ".gnupg/", ".kube/", ".docker/config.json",
)


@dataclass(frozen=True)
class GitInfo:
    """The git state of a project. ``diff`` is ``git diff HEAD --binary`` of the project folder, decoded with
    ``surrogateescape`` (``diff.encode("utf-8", "surrogateescape")`` gives the exact bytes ``diff_sha256`` hashes)."""

    commit: str | None
    dirty: bool
    diff: str
    diff_sha256: str


# --- listing the project -----------------------------------------------------------------------------------------
class IgnoreRules:
    """Gitignore patterns from several ignore files, each applying below its own folder; deeper files and later
    patterns win, as in git. Matching is ``pathspec``'s ``GitIgnoreSpec``."""

    def __init__(self, layers: Sequence[tuple[str, Any]] = ()) -> None:
        self._layers = tuple(layers)  # (folder relative to the root, "" for the root; GitIgnoreSpec)
        self._dirs: dict[str, bool] = {}

    @classmethod
    def parse(cls, text: str, base: str = "") -> IgnoreRules:
        """The rules of one ignore file's text, for the folder ``base`` (relative to the root)."""
        import pathspec

        return cls([(base, pathspec.GitIgnoreSpec.from_lines(text.splitlines()))])

    def __add__(self, other: IgnoreRules) -> IgnoreRules:
        return IgnoreRules(self._layers + other._layers)

    def match(self, path: str, is_dir: bool) -> bool:
        """Whether the last pattern matching ``path`` itself excludes it (parents are not considered)."""
        for base, spec in reversed(self._layers):
            if base and not path.startswith(base + "/"):
                continue
            rel = path[len(base) + 1:] if base else path
            result = spec.check_file(rel + "/" if is_dir else rel).include
            if result is not None:
                return bool(result)
        return False

    def excludes(self, path: str, is_dir: bool = False) -> bool:
        """Whether ``path`` is excluded, itself or through an excluded parent folder."""
        parts = path.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            excluded = self._dirs.get(parent)
            if excluded is None:
                excluded = self._dirs[parent] = self.match(parent, True)
            if excluded:
                return True
        return self.match(path, is_dir)


# --- listing the project -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectListing:
    """The files that go into a snapshot, and the credential files left out of it by default."""

    files: list[str]
    withheld: list[str] = field(default_factory=list)
    withheld_dirs: list[str] = field(default_factory=list)  # folders left out whole (``.ssh``), for the warning

    @property
    def warning(self) -> str | None:
        """One line for the user naming what was left out and how to include it; None when nothing was."""
        if not self.withheld:
            return None
        items = [f"{d}/" for d in self.withheld_dirs]
        items += [f for f in self.withheld if not any(f.startswith(d + "/") for d in self.withheld_dirs)]
        items.sort()
        shown = ", ".join(items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
        return (f"left out of the snapshot as likely credentials: {shown} (to include one, add a negated pattern "
                f"such as !{items[0]} to {ENVKITIGNORE})")


def list_project(root: Path, exclude_dirs: Iterable[Path] = (), ignore: Iterable[str] = ()) -> ProjectListing:
    """The files of a project that go into its snapshot, as sorted ``/``-separated paths relative to ``root``.

    In a git work tree the list is ``git ls-files -co --exclude-standard`` (tracked plus untracked-not-ignored);
    elsewhere the folder is walked honouring every ``.gitignore`` on the way. Either way :data:`CREDENTIAL_PATTERNS`
    and then the root's ``.envkitignore`` are applied on top, and ``.git`` and ``.envkit`` are always left out.

    Args:
        root: the project folder.
        exclude_dirs: more folders to leave out (the run store when ``ENVKIT_HOME`` points inside the project).
        ignore: more gitignore patterns, relative to the root (the project configuration's ``ignore``); applied
            before ``.envkitignore``, whose negations can take a file back.

    Returns:
        The listing; ``withheld`` holds the files left out only because they look like credentials, and
        ``warning`` says so in one line, for the caller to show.
    """
    root = Path(root)
    listed = _git_list(root)
    files = listed if listed is not None else _walk(root, "", _gitignore(root, ""))
    always = IgnoreRules.parse("\n".join(ALWAYS_EXCLUDED))
    user = IgnoreRules.parse("\n".join(ignore)) + _read_rules(root / ENVKITIGNORE)
    rules = always + IgnoreRules.parse("\n".join(CREDENTIAL_PATTERNS)) + user
    without_credentials = always + user
    skip = []
    for d in exclude_dirs:
        try:
            skip.append(Path(d).resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            continue  # not under the project
    kept, withheld, dirs = [], [], set()
    for f in sorted(set(files)):
        if any(f == s or f.startswith(s + "/") for s in skip):
            continue
        if not rules.excludes(f):
            kept.append(f)
        elif not without_credentials.excludes(f):
            withheld.append(f)
            parts = f.split("/")
            # The outermost folder a pattern excludes (.ssh/): re-including a file below it takes that folder.
            folder = next(("/".join(parts[:k]) for k in range(1, len(parts)) if rules.match("/".join(parts[:k]), True)),
                          None)
            if folder:
                dirs.add(folder)
    return ProjectListing(kept, withheld, sorted(dirs))


def list_project_files(root: Path, exclude_dirs: Iterable[Path] = ()) -> list[str]:
    """:func:`list_project`'s files alone."""
    return list_project(root, exclude_dirs).files


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
        files: the relative paths to copy; default :func:`list_project_files` (credential files left out: call
            :func:`list_project` first and pass its files to show its warning).
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
        return hash_path(root / name, name, dest / name, on_progress)

    return collect(parallel(copy, names))
