"""Image pieces written byte for byte the same on every host: tar layers, the image config, a docker archive.

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

The image ID is the sha256 of the config bytes, so the config is canonical JSON (sorted keys, no spaces) with every
date set from the epoch. ``docker load`` keeps those bytes as they are; it checks each layer against its diff_id.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

from envkit.errors import ImageArchiveError

LAYER_FORMAT = tarfile.GNU_FORMAT
COPY_BUFSIZE = 4 * 1024 * 1024
ENCODING = "utf-8"  # names are written the same whatever the host's locale
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5": "zstd", b"BZ": "bzip2", b"\xfd7": "xz"}


@dataclass(frozen=True)
class LayerBlob:
    """An uncompressed tar layer: its diff_id and where its bytes are (a file, or a range of one)."""

    diff_id: str
    path: Path
    offset: int = 0
    size: int = 0


@dataclass(frozen=True)
class DockerArchive:
    """What ``read_docker_archive`` found: the config's bytes and parsed form, and each layer's bytes."""

    config_bytes: bytes
    config: dict[str, Any]
    layers: list[LayerBlob]
    repo_tags: list[str] = field(default_factory=list)

    @property
    def image_id(self) -> str:
        return image_id(self.config_bytes)


@dataclass
class _Entry:
    """One normalised tar entry, and where its file data comes from."""

    name: str
    info: tarfile.TarInfo
    data: Any = None  # a host path, or a TarInfo of the source tarball; None for non-files


# --- layers -------------------------------------------------------------------------------------------------------
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
    first_link: dict[tuple[int, int], str] = {}
    for rel, path, st in _walk(src, prefix, exclude):
        entry = _from_stat(rel, path, st)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in first_link:
                entry.info.type, entry.info.linkname, entry.info.size, entry.data = tarfile.LNKTYPE, first_link[key], 0, None
            else:
                first_link[key] = rel
        entries.append(entry)
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
    """Every path under root, depth first in name order, with its name in the layer and its lstat."""
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
    if raw.startswith("/") or "\0" in raw:
        raise ImageArchiveError(f"{src}: entry {raw!r} has an absolute name; a layer holds only relative paths",
                                hint="the tarball is damaged or hostile; make it again")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageArchiveError(f"{src}: entry {raw!r} climbs out of the root with '..'",
                                hint="the tarball is damaged or hostile; make it again")
    return "/".join(parts)


def _clean_prefix(prefix: str) -> str:
    cleaned = _safe_name(prefix.strip("/"), Path("prefix")) if prefix else ""
    return cleaned


class _HashingWriter:
    """A write-only file that hashes what passes through (the diff_id without reading the layer again)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.hash, self.size = raw, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:  # the caller owns the underlying file
        pass


# --- config -------------------------------------------------------------------------------------------------------
def rfc3339(epoch: int) -> str:
    """The epoch as an RFC 3339 UTC date (the form Docker writes): 2023-11-14T22:13:20Z."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def history_entry(epoch: int, created_by: str, *, empty_layer: bool = False, comment: str | None = None) -> dict:
    """One history record, dated at the epoch (Docker counts the non-empty ones against the layers)."""
    entry: dict[str, Any] = {"created": rfc3339(epoch), "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if empty_layer:
        entry["empty_layer"] = True
    return entry


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, ASCII only: one byte string for one value, on any host and Python."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def image_config(*, diff_ids: Sequence[str], epoch: int, env: Mapping[str, str] | None = None,
                 labels: Mapping[str, str] | None = None, working_dir: str = "", cmd: Sequence[str] | None = None,
                 history: Sequence[Mapping[str, Any]] | None = None, architecture: str = "amd64",
                 os_name: str = "linux", extra: Mapping[str, Any] | None = None) -> bytes:
    """A Docker image config written by envkit: canonical JSON with every date set from the epoch.

    Args:
        diff_ids: the layers' diff_ids, bottom first.
        epoch: SOURCE_DATE_EPOCH; the image's ``created`` date.
        env: ENV, written as ``K=V`` sorted by name.
        labels: LABELs.
        working_dir: WORKDIR.
        cmd: CMD (exec form).
        history: one record per layer at least (``history_entry``); default: one "envkit layer N" per layer.
        architecture: the GOARCH name (amd64, arm64).
        os_name: the GOOS name (linux).
        extra: more keys of the container config (Entrypoint, User, ... inherited from a base), kept as given.

    Returns:
        The config's bytes; ``image_id`` of them is the ID ``docker load`` gives the image.

    Raises:
        ImageArchiveError: the history's non-empty records do not match the layers in number.
    """
    history = list(history) if history is not None else [
        history_entry(epoch, f"envkit layer {i + 1}") for i in range(len(diff_ids))]
    non_empty = sum(1 for h in history if not h.get("empty_layer"))
    if non_empty != len(diff_ids):
        raise ImageArchiveError(f"the history names {non_empty} layers, the image has {len(diff_ids)}")
    container: dict[str, Any] = dict(extra or {})
    if env:
        container["Env"] = [f"{k}={v}" for k, v in sorted(env.items())]
    if labels:
        container["Labels"] = dict(labels)
    if working_dir:
        container["WorkingDir"] = working_dir
    if cmd is not None:
        container["Cmd"] = list(cmd)
    return canonical_json({
        "architecture": architecture,
        "config": container,
        "created": rfc3339(epoch),
        "history": history,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    })


def image_id(config_bytes: bytes) -> str:
    """The image ID Docker gives these config bytes."""
    return "sha256:" + hashlib.sha256(config_bytes).hexdigest()


# --- docker archives ----------------------------------------------------------------------------------------------
def write_docker_archive(dest: Path | BinaryIO, config_bytes: bytes, layers: Sequence[LayerBlob],
                         repo_tags: Sequence[str] | None = None, epoch: int = 0) -> str:
    """Write a ``docker load``-able archive (uncompressed, the same bytes for the same inputs).

    Layout: ``<config sha256>.json``, ``<diff_id hex>/layer.tar`` per layer, ``manifest.json``.

    Args:
        dest: a file path, or a binary stream (e.g. the stdin of ``docker load``; nothing is sought).
        config_bytes: from ``image_config``.
        layers: bottom first; their diff_ids must be the config's.
        repo_tags: names ``docker load`` tags the image with.
        epoch: the mtime of the archive's own entries.

    Returns:
        The image ID ``docker load`` gives the image.

    Raises:
        ImageArchiveError: the layers' diff_ids are not the config's.
    """
    config = json.loads(config_bytes)
    if [layer.diff_id for layer in layers] != config.get("rootfs", {}).get("diff_ids"):
        raise ImageArchiveError("the layers given are not the config's rootfs.diff_ids")
    config_name = image_id(config_bytes).split(":", 1)[1] + ".json"
    layer_names = [layer.diff_id.split(":", 1)[1] + "/layer.tar" for layer in layers]
    manifest = [{"Config": config_name, "RepoTags": list(repo_tags or []), "Layers": layer_names}]
    if isinstance(dest, (str, Path)):
        with open(dest, "wb") as fh:
            _write_archive(fh, config_name, config_bytes, layers, layer_names, manifest, epoch)
    else:
        _write_archive(dest, config_name, config_bytes, layers, layer_names, manifest, epoch)
    return image_id(config_bytes)


def _write_archive(fh: BinaryIO, config_name: str, config_bytes: bytes, layers: Sequence[LayerBlob],
                   layer_names: list[str], manifest: list, epoch: int) -> None:
    with tarfile.open(fileobj=fh, mode="w|", format=LAYER_FORMAT, encoding=ENCODING) as tar:
        tar.copybufsize = COPY_BUFSIZE
        _add_bytes(tar, config_name, config_bytes, epoch)
        written: set[str] = set()
        for layer, name in zip(layers, layer_names):
            if name in written:  # the same layer twice in one image: one copy, named twice in the manifest
                continue
            written.add(name)
            size = layer.size or layer.path.stat().st_size - layer.offset
            info = _file_info(name, size, epoch)
            with layer.path.open("rb") as src:
                src.seek(layer.offset)
                tar.addfile(info, src)
        _add_bytes(tar, "manifest.json", canonical_json(manifest), epoch)


def _file_info(name: str, size: int, epoch: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, epoch, 0o644, "", ""
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    import io

    tar.addfile(_file_info(name, len(data), epoch), io.BytesIO(data))


def read_docker_archive(path: Path, verify: bool = False) -> DockerArchive:
    """Parse a ``docker save`` archive (one image) so its layers can be reused without unpacking them.

    Args:
        path: the archive (uncompressed, as ``docker save`` writes it).
        verify: hash each layer and compare it with its diff_id (reads every byte).

    Returns:
        The config (bytes and parsed) and each layer as a range of the archive file.

    Raises:
        ImageArchiveError: not a tarball, no or several images in manifest.json, a missing or compressed layer,
            a layer count or (with verify) a hash that does not match the config.
    """
    try:
        tar = tarfile.open(path, "r:", encoding=ENCODING)
    except (tarfile.TarError, OSError) as exc:
        raise ImageArchiveError(f"{path} is not an uncompressed docker archive ({exc})",
                                hint="make it with `docker save IMAGE -o FILE`") from exc
    with tar:
        members = {_safe_name(m.name, path): m for m in tar.getmembers()}
        manifest = json.loads(_member_bytes(tar, members, "manifest.json", path))
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise ImageArchiveError(f"{path}: manifest.json names {len(manifest)} images, expected one",
                                    hint="save one image per archive: `docker save IMAGE -o FILE`")
        entry = manifest[0]
        config_bytes = _member_bytes(tar, members, entry["Config"], path)
        config = json.loads(config_bytes)
        diff_ids = config.get("rootfs", {}).get("diff_ids") or []
        if len(diff_ids) != len(entry.get("Layers", [])):
            raise ImageArchiveError(f"{path}: {len(entry.get('Layers', []))} layers for {len(diff_ids)} diff_ids")
        layers = []
        for diff_id, name in zip(diff_ids, entry["Layers"]):
            member = _resolve_member(members, _safe_name(name, path), path)
            layer = LayerBlob(diff_id=diff_id, path=path, offset=member.offset_data, size=member.size)
            _check_layer(layer, verify)
            layers.append(layer)
    return DockerArchive(config_bytes=config_bytes, config=config, layers=layers,
                         repo_tags=list(entry.get("RepoTags") or []))


def _resolve_member(members: Mapping[str, tarfile.TarInfo], name: str, path: Path) -> tarfile.TarInfo:
    """The regular file behind a name; ``docker save`` writes a repeated layer as a symlink to the first."""
    for _ in range(8):
        member = members.get(name)
        if member is None:
            break
        if member.isreg():
            return member
        if member.issym():
            name = _safe_name(os.path.normpath(os.path.join(os.path.dirname(name), member.linkname)), path)
            continue
        break
    raise ImageArchiveError(f"{path}: layer {name!r} named in manifest.json is not in the archive")


def _member_bytes(tar: tarfile.TarFile, members: Mapping[str, tarfile.TarInfo], name: str, path: Path) -> bytes:
    member = _resolve_member(members, _safe_name(name, path), path)
    fh = tar.extractfile(member)
    assert fh is not None  # a regular file always has data
    return fh.read()


def _check_layer(layer: LayerBlob, verify: bool) -> None:
    with layer.path.open("rb") as fh:
        fh.seek(layer.offset)
        head = fh.read(2)
        kind = _COMPRESSED_MAGIC.get(head)
        if kind:
            raise ImageArchiveError(f"{layer.path}: layer {layer.diff_id[:19]} is {kind}-compressed",
                                    hint="save the image with `docker save`, which writes uncompressed layers")
        if not verify:
            return
        fh.seek(layer.offset)
        h, left = hashlib.sha256(), layer.size
        while left:
            chunk = fh.read(min(COPY_BUFSIZE, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    if "sha256:" + h.hexdigest() != layer.diff_id:
        raise ImageArchiveError(f"{layer.path}: a layer has sha256:{h.hexdigest()[:12]}, its diff_id is "
                                f"{layer.diff_id[:19]}", hint="the archive is damaged; save the image again")
