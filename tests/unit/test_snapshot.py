"""Project listing (git and .envkitignore rules), git state, snapshot copies and manifests, on real files and repos."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from envkit.errors import SnapshotError
from envkit.manifest import Manifest, compare, manifest, manifest_sha256, outputs_between
from envkit.run.snapshot import IgnoreRules, git_info, list_project_files, snapshot

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env).stdout.decode()


def write(root: Path, rel: str, text: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GITIGNORE = """\
# comment
*.log
!keep.log
build/
/top-only.txt
data/**/*.bin
cache/**
doc/*.tmp
[ab].out
"""

FILES = [
    "train.py", "a.log", "keep.log", "sub/b.log", "sub/keep.log", "build/x.o", "sub/build/y.o", "top-only.txt",
    "sub/top-only.txt", "data/x.bin", "data/deep/er/y.bin", "data/z.csv", "cache/1/2", "doc/a.tmp", "doc/sub/b.tmp",
    "a.out", "c.out", "sub/nested/.gitignore", "sub/nested/secret.key", "sub/nested/ok.txt"
]


def make_project(root: Path) -> None:
    for rel in FILES:
        write(root, rel)
    write(root, ".gitignore", GITIGNORE)
    write(root, "sub/nested/.gitignore", "*.key\n")


def test_walk_without_git_matches_what_git_lists(tmp_path: Path) -> None:
    """Our gitignore subset (used outside git) lists exactly what git itself lists for the same tree."""
    plain, repo = tmp_path / "plain", tmp_path / "repo"
    make_project(plain)
    make_project(repo)
    git(repo, "init", "-q")
    by_git = list_project_files(repo)
    assert by_git == sorted(git(repo, "ls-files", "-co", "--exclude-standard").split())
    assert list_project_files(plain) == by_git
    assert "keep.log" in by_git and "sub/keep.log" in by_git and "a.log" not in by_git
    assert "sub/top-only.txt" in by_git and "top-only.txt" not in by_git
    assert "sub/nested/secret.key" not in by_git and "sub/nested/ok.txt" in by_git
    assert "doc/sub/b.tmp" in by_git and "doc/a.tmp" not in by_git
    assert "c.out" in by_git and "a.out" not in by_git


def test_envkitignore_on_top_of_git(tmp_path: Path) -> None:
    write(tmp_path, "train.py")
    write(tmp_path, "data/big.bin")
    write(tmp_path, "data/keep.txt")
    write(tmp_path, "models/a.pt")
    write(tmp_path, "models/b.pt")
    write(tmp_path, "sub/models/c.pt")
    write(tmp_path, "notes.md")
    write(tmp_path, ".envkit/runs/x/record.json")
    write(tmp_path, "tracked_then_ignored.txt")
    write(tmp_path, ".envkitignore", "data/\n!data/keep.txt\n/models/*.pt\n!/models/b.pt\n*.md\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "train.py", "tracked_then_ignored.txt")
    git(tmp_path, "commit", "-qm", "init")
    write(tmp_path, ".gitignore", "tracked_then_ignored.txt\n")
    files = list_project_files(tmp_path)
    # data/ excluded as a directory: like git, a file inside cannot be re-included.
    assert files == [".envkitignore", ".gitignore", "models/b.pt", "sub/models/c.pt", "tracked_then_ignored.txt",
                     "train.py"]


def test_git_mode_skips_deleted_files_and_walks_nested_repos(tmp_path: Path) -> None:
    write(tmp_path, "a.py")
    write(tmp_path, "gone.py")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "init")
    (tmp_path / "gone.py").unlink()
    write(tmp_path, "vendor/lib/mod.py")
    write(tmp_path, "vendor/lib/junk.pyc")
    write(tmp_path, "vendor/lib/.gitignore", "*.pyc\n")
    git(tmp_path / "vendor" / "lib", "init", "-q")
    assert list_project_files(tmp_path) == ["a.py", "vendor/lib/.gitignore", "vendor/lib/mod.py"]


def test_exclude_dirs_leaves_out_a_store_inside_the_project(tmp_path: Path) -> None:
    write(tmp_path, "a.py")
    write(tmp_path, "runstore/runs/r/record.json")
    assert list_project_files(tmp_path, exclude_dirs=[tmp_path / "runstore"]) == ["a.py"]


@pytest.mark.parametrize(("pattern", "path", "is_dir", "excluded"), [
    ("*.py", "a/b/c.py", False, True),
    ("/*.py", "a/c.py", False, False),
    ("a/*.py", "a/b/c.py", False, False),
    ("a/**/c.py", "a/c.py", False, True),
    ("a/**/c.py", "a/x/y/c.py", False, True),
    ("**/logs", "x/logs/f", False, True),
    ("logs/", "logs", False, False),
    ("logs/", "x/logs/f", False, True),
    ("f?.txt", "f1.txt", False, True),
    ("f?.txt", "f/.txt", False, False),
    ("[!a]*.txt", "b.txt", False, True),
    ("[!a]*.txt", "a.txt", False, False),
    ("\\#x", "#x", False, True),
    ("\\!x", "!x", False, True),
    # Not checked: `out/**` against the folder `out` itself. git leaves the folder in (so `!out/keep` can re-include
    # a file); pathspec's GitIgnoreSpec, which envkit uses, matches the folder too.
    ("out/**", "out/a/b", False, True),
])
def test_ignore_patterns(pattern: str, path: str, is_dir: bool, excluded: bool) -> None:
    assert IgnoreRules.parse(pattern).excludes(path, is_dir) is excluded


def test_git_info(tmp_path: Path) -> None:
    assert git_info(tmp_path) is None
    write(tmp_path, "a.py", "print(1)\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    first = git_info(tmp_path)
    assert first is not None and first.commit is None and first.dirty and "print(1)" in first.diff
    git(tmp_path, "commit", "-qm", "init")
    clean = git_info(tmp_path)
    assert clean is not None
    assert clean.commit == git(tmp_path, "rev-parse", "HEAD").strip()
    assert not clean.dirty and clean.diff == "" and clean.diff_sha256 == hashlib.sha256(b"").hexdigest()
    write(tmp_path, "a.py", "print(2)\n")
    dirty = git_info(tmp_path)
    assert dirty is not None and dirty.dirty and "+print(2)" in dirty.diff
    raw = subprocess.run(["git", "-C", str(tmp_path), "diff", "--binary", "HEAD", "--", "."], capture_output=True,
                         check=True).stdout
    assert dirty.diff_sha256 == hashlib.sha256(raw).hexdigest()
    (tmp_path / "a.py").write_text("print(1)\n")
    write(tmp_path, "untracked.py")
    untracked = git_info(tmp_path)
    assert untracked is not None and untracked.dirty and untracked.diff == ""


def test_snapshot_copies_files_modes_links_and_hashes(tmp_path: Path) -> None:
    root, dest = tmp_path / "p", tmp_path / "copy"
    write(root, "train.py", "print('hi')\n")
    big = root / "data" / "big.bin"
    big.parent.mkdir()
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several read chunks
    (root / "train.py").chmod(0o755)
    (root / "link.py").symlink_to("train.py")
    write(root, "ignored.tmp")
    write(root, ".envkitignore", "*.tmp\n")
    m = snapshot(root, dest)
    assert [e.path for e in m.entries] == [".envkitignore", "data/big.bin", "link.py", "train.py"]
    for e in m.entries:
        if e.link is None:
            assert e.sha256 == hashlib.sha256((root / e.path).read_bytes()).hexdigest()
            assert e.size == (root / e.path).stat().st_size
            assert (dest / e.path).read_bytes() == (root / e.path).read_bytes()
    assert stat.S_IMODE((dest / "train.py").stat().st_mode) == 0o755
    assert os.readlink(dest / "link.py") == "train.py"
    assert m.by_path()["link.py"].link == "train.py"
    assert not (dest / "ignored.tmp").exists()
    again = manifest(dest)
    assert again.entries == m.entries and again.sha256 == m.sha256 == manifest_sha256(reversed(m.entries))


def test_snapshot_hashes_agree_with_sha256sum(tmp_path: Path) -> None:
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum is not installed")
    for i in range(5):
        (tmp_path / f"f{i}").write_bytes(os.urandom(1000 * i))
    out = subprocess.run(["sha256sum", *[f"f{i}" for i in range(5)]], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    theirs = {name: digest for digest, name in (line.split() for line in out.splitlines())}
    assert {e.path: e.sha256 for e in manifest(tmp_path).entries} == theirs


def test_snapshot_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    write(tmp_path / "p", "a.py")
    write(tmp_path / "dest", "old.txt")
    with pytest.raises(SnapshotError, match="not empty"):
        snapshot(tmp_path / "p", tmp_path / "dest")


def test_outputs_are_created_and_changed_files(tmp_path: Path) -> None:
    write(tmp_path / "p", "train.py")
    write(tmp_path / "p", "config.json", "{}")
    write(tmp_path / "p", "old.txt")
    work = tmp_path / "work"
    before = snapshot(tmp_path / "p", work)
    write(work, "model.pt", "weights")
    write(work, "out/metrics.json", "{}")
    write(work, "config.json", "{\"lr\": 1}")
    write(work, "__pycache__/x.pyc")
    (work / "old.txt").unlink()
    after = manifest(work, exclude=["__pycache__/"], previous=before)
    changes = {c.path: c.kind for c in compare(before.entries, after.entries)}
    assert changes == {"model.pt": "extra", "out/metrics.json": "extra", "config.json": "differs",
                       "old.txt": "missing"}
    assert [e.path for e in outputs_between(before, after)] == ["config.json", "model.pt", "out/metrics.json"]


def test_previous_manifest_skips_untouched_files_but_sees_hidden_changes(tmp_path: Path) -> None:
    write(tmp_path / "p", "a.bin", "a" * 1000)
    write(tmp_path / "p", "b.bin", "b" * 1000)
    work = tmp_path / "work"
    before = snapshot(tmp_path / "p", work)
    read: list[int] = []
    unchanged = manifest(work, previous=before, on_progress=read.append)
    assert unchanged.entries == before.entries and sum(read) == 0  # nothing was read again
    # Same size, mtime put back: only the ctime (which user space cannot set) shows the change.
    st = (work / "b.bin").stat()
    (work / "b.bin").write_text("c" * 1000)
    os.utime(work / "b.bin", ns=(st.st_atime_ns, st.st_mtime_ns))
    read.clear()
    changed = manifest(work, previous=before, on_progress=read.append)
    assert [c.path for c in compare(before.entries, changed.entries)] == ["b.bin"]
    assert sum(read) == 1000


def test_manifest_round_trips_through_its_list_form(tmp_path: Path) -> None:
    write(tmp_path, "a")
    (tmp_path / "l").symlink_to("a")
    m = manifest(tmp_path)
    assert m.to_list() == [{"path": "a", "size": 1, "sha256": hashlib.sha256(b"x").hexdigest()},
                           {"path": "l", "size": 1, "sha256": hashlib.sha256(b"a").hexdigest(), "link": "a"}]
    assert Manifest(list(reversed(m.entries))).sha256 == m.sha256
