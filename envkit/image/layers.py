"""Tar layers written byte for byte the same on every host, from a directory tree or a root filesystem tarball.

What makes a layer reproducible (the recipe of Nix's ``dockerTools``, ko, apko and Bazel's rules_oci):

- entries sorted by name, component by component (as ``tar --sort=name``), so parents come before their children;
- every mtime clamped to the epoch (``SOURCE_DATE_EPOCH``): older times are kept, build-time ones become the epoch;
- owners numeric (uname and gname empty); a directory tree is owned by 0:0, a root filesystem tarball keeps its
  numeric owners (dpkg made them, and /etc/shadow must stay group shadow);
- permission bits kept as they are, setuid and setgid included: a Debian root filesystem needs them on su, passwd
  and mount, and a tree envkit makes has none;
- GNU tar format (long names as ././@LongLink records): no PAX headers, hence no atime, ctime or extended attributes;
- hard links written as a regular file at the first name (in sorted order) and links to it at the others;
- no device nodes, FIFOs or sockets: the engine makes /dev in every container; a rootfs passes ``exclude=("dev/*",)``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

from envkit.errors import ImageArchiveError

LAYER_FORMAT = tarfile.GNU_FORMAT
COPY_BUFSIZE = 4 * 1024 * 1024
ENCODING = "utf-8"  # names are written the same whatever the host's locale


@dataclass(frozen=True)
class LayerBlob:
    """An uncompressed tar layer: its diff_id and where its bytes are (a file, or a range of one)."""

    diff_id: str
    path: Path
    offset: int = 0
    size: int = 0


@dataclass
class _Entry:
    """One normalised tar entry, and where its file data comes from."""

    name: str
    info: tarfile.TarInfo
    data: Any = None  # a host path, or a TarInfo of the source tarball; None for non-files


def write_layer(src: Path, dest_tar: Path, epoch: int, *, prefix: str = "", owner: tuple[int, int] = (0, 0),
                exclude: Collection[str] = (), root_mode: int = 0o755) -> LayerBlob:
    """Write a directory tree as a normalised, uncompressed tar layer.

    Args:
        src: the directory whose contents become the layer (``src`` itself becomes ``prefix``, when one is given).
        dest_tar: the layer file to write.
        epoch: SOURCE_DATE_EPOCH; every mtime is clamped to it.
        prefix: where the tree goes in the image (e.g. ``opt/envkit/venv``); its parents are added as 0755 dirs.
        owner: the numeric uid and gid of every entry.
        exclude: glob patterns (fnmatch, on the path inside the layer); a matched directory drops its subtree.
        root_mode: the mode of ``prefix`` itself (a temporary folder's 0700 must not reach the image).

    Returns:
        The layer, with its diff_id (``sha256:`` + the sha256 of the tar bytes) and size.

    Raises:
        ImageArchiveError: a device node, FIFO or socket in the tree, or an unreadable entry.
    """
    prefix = _clean_prefix(prefix)
    entries: list[_Entry] = []
    if prefix:
        parts = prefix.split("/")
        for i in range(1, len(parts)):
            entries.append(_dir_entry("/".join(parts[:i]), 0o755, epoch))
        entries.append(_dir_entry(prefix, root_mode, epoch))
    inodes: dict[str, tuple[int, int]] = {}
    for rel, path, st in _walk(src, prefix, exclude):
        entries.append(_from_stat(rel, path, st))
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            inodes[rel] = (st.st_dev, st.st_ino)
    # Hard links: the first name in layer order carries the data, later names link to it.
    entries.sort(key=lambda e: _sort_key(e.name))
    first_name: dict[tuple[int, int], str] = {}
    for entry in entries:
        key = inodes.get(entry.name)
        if key is None:
            continue
        if key in first_name:
            entry.info.type, entry.info.linkname, entry.info.size = tarfile.LNKTYPE, first_name[key], 0
            entry.data = None
        else:
            first_name[key] = entry.name
    for entry in entries:
        _normalise(entry.info, epoch, owner)
    return _write_entries(entries, dest_tar, opener=lambda p: open(p, "rb"))


def write_layer_from_tar(src_tar: Path, dest_tar: Path, epoch: int, *, owner: tuple[int, int] | None = None,
                         exclude: Collection[str] = ()) -> LayerBlob:
    """Rewrite a root filesystem tarball (mmdebstrap's output, say) as a normalised tar layer.

    Args:
        src_tar: an uncompressed tarball; names may start with ``./``.
        dest_tar: the layer file to write.
        epoch: SOURCE_DATE_EPOCH; every mtime is clamped to it.
        owner: force this uid and gid on every entry; None keeps the tarball's numeric owners.
        exclude: glob patterns (fnmatch, on the path inside the layer); a matched directory drops its subtree.

    Returns:
        The layer, with its diff_id and size.

    Raises:
        ImageArchiveError: not an uncompressed tarball, or an unsafe or ambiguous entry: an absolute name, a ``..``
            component, a name given twice, a hard link to no earlier file, a device node outside ``exclude``.
    """
    try:
        tar = tarfile.open(src_tar, "r:", encoding=ENCODING, errors="surrogateescape")
    except (tarfile.TarError, OSError) as exc:
        raise ImageArchiveError(f"{src_tar} is not an uncompressed tar archive ({exc})",
                                hint="give the root filesystem as a plain .tar (decompress it first)") from exc
    with tar:
        by_name: dict[str, _Entry] = {}
        for member in tar:
            name = _safe_name(member.name, src_tar)
            if not name or _excluded(name, exclude):
                continue
            if name in by_name:
                raise ImageArchiveError(f"{src_tar} holds {name!r} twice; which one is meant is ambiguous")
            by_name[name] = _from_member(name, member, src_tar, by_name)
        _regroup_hardlinks(by_name)
        entries = list(by_name.values())
        for entry in entries:
            _normalise(entry.info, epoch, owner)
        return _write_entries(entries, dest_tar, opener=tar.extractfile)


def _walk(root: Path, prefix: str, exclude: Collection[str]) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every path under root (in no useful order: the caller sorts), with its name in the layer and its lstat."""
    stack = [(root, prefix)]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            names = sorted(os.listdir(folder), key=os.fsencode)
        except OSError as exc:
            raise ImageArchiveError(f"cannot list {folder} for a layer: {exc.strerror}") from exc
        subdirs = []
        for name in names:
            rel = f"{rel_folder}/{name}" if rel_folder else name
            if _excluded(rel, exclude):
                continue
            path = folder / name
            st = os.lstat(path)
            yield rel, path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((path, rel))
        stack.extend(reversed(subdirs))


def _from_stat(name: str, path: Path, st: os.stat_result) -> _Entry:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISREG(st.st_mode):
        info.type, info.size = tarfile.REGTYPE, st.st_size
        return _Entry(name, info, path)
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    else:
        raise ImageArchiveError(f"{path} is a device node, FIFO or socket; a layer holds none",
                                hint="the engine makes /dev in every container; remove it or exclude it")
    return _Entry(name, info)


def _dir_entry(name: str, mode: int, mtime: int) -> _Entry:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, mtime
    return _Entry(name, info)


def _from_member(name: str, member: tarfile.TarInfo, src: Path, seen: Mapping[str, _Entry]) -> _Entry:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uid, info.gid = member.mode & 0o7777, int(member.mtime), member.uid, member.gid
    if member.isreg():  # regular, contiguous and sparse files
        info.type, info.size = tarfile.REGTYPE, member.size
        return _Entry(name, info, member)
    if member.isdir():
        info.type = tarfile.DIRTYPE
    elif member.issym():
        info.type, info.linkname = tarfile.SYMTYPE, member.linkname
    elif member.islnk():
        target = _safe_name(member.linkname, src)
        if target not in seen or seen[target].info.type not in (tarfile.REGTYPE, tarfile.LNKTYPE):
            raise ImageArchiveError(f"{src}: hard link {name!r} points to {member.linkname!r}, no earlier file",
                                    hint="the tarball is damaged or hostile; make it again")
        info.type, info.linkname = tarfile.LNKTYPE, target
    else:
        raise ImageArchiveError(f"{src}: {name!r} is a device node, FIFO or other special file; a layer holds none",
                                hint="the engine makes /dev in every container; exclude it (exclude=('dev/*',))")
    return _Entry(name, info)


def _regroup_hardlinks(by_name: dict[str, _Entry]) -> None:
    """Make the first name of each hard-link group (in layer order) carry the data, the others link to it."""
    groups: dict[str, list[str]] = {}
    for name, entry in by_name.items():
        if entry.info.type == tarfile.LNKTYPE:
            root = entry.info.linkname
            while by_name[root].info.type == tarfile.LNKTYPE:
                root = by_name[root].info.linkname
            groups.setdefault(root, [root]).append(name)
    for root, names in groups.items():
        names.sort(key=_sort_key)
        data = by_name[root]
        for i, name in enumerate(names):
            info = by_name[name].info
            info.mode, info.uid, info.gid, info.mtime = data.info.mode, data.info.uid, data.info.gid, data.info.mtime
            if i == 0:
                info.type, info.linkname, info.size = tarfile.REGTYPE, "", data.info.size
                by_name[name].data = data.data
            else:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, names[0], 0
                by_name[name].data = None


def _normalise(info: tarfile.TarInfo, epoch: int, owner: tuple[int, int] | None) -> None:
    info.mtime = max(0, min(int(info.mtime), epoch))
    if owner is not None:
        info.uid, info.gid = owner
    info.uname = info.gname = ""
    info.devmajor = info.devminor = 0
    info.pax_headers = {}
    if info.type == tarfile.SYMTYPE:
        info.mode = 0o777  # a symlink's own mode means nothing on Linux; filesystems report it differently


def _write_entries(entries: list[_Entry], dest: Path, opener) -> LayerBlob:
    entries.sort(key=lambda e: _sort_key(e.name))
    with dest.open("wb") as raw:
        out = _HashingWriter(raw)
        with tarfile.open(fileobj=out, mode="w", format=LAYER_FORMAT, encoding=ENCODING, errors="surrogateescape",
                          copybufsize=COPY_BUFSIZE) as tar:
            for entry in entries:
                if entry.data is None:
                    tar.addfile(entry.info)
                    continue
                fh = opener(entry.data)
                try:
                    tar.addfile(entry.info, fh)
                finally:
                    fh.close()
    return LayerBlob(diff_id="sha256:" + out.hash.hexdigest(), path=dest, size=out.size)


def _sort_key(name: str) -> tuple[bytes, ...]:
    return tuple(part.encode(ENCODING, "surrogateescape") for part in name.split("/"))


def _excluded(name: str, patterns: Collection[str]) -> bool:
    if not patterns:
        return False
    parts = name.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def _safe_name(raw: str, src: Path) -> str:
    """A member name made relative (``./etc`` -> ``etc``); absolute names and ``..`` are refused."""
    if raw.startswith("/"):
        raise ImageArchiveError(f"{src}: entry {raw!r} has an absolute name; a layer holds only relative paths",
                                hint="the tarball is damaged or hostile; make it again")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageArchiveError(f"{src}: entry {raw!r} climbs out of the root with '..'",
                                hint="the tarball is damaged or hostile; make it again")
    return "/".join(parts)


def _clean_prefix(prefix: str) -> str:
    return _safe_name(prefix.strip("/"), Path("prefix")) if prefix else ""


class _HashingWriter:
    """A write-only file that counts (and hashes) what passes through: the diff_id without reading it again."""

    def __init__(self, raw: BinaryIO, hashing: bool = True) -> None:
        self.raw, self.hash, self.size, self.hashing = raw, hashlib.sha256(), 0, hashing

    def write(self, data: bytes) -> int:
        if self.hashing:
            self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:  # the caller owns the underlying file
        pass
