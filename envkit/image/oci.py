"""Docker images written by envkit: the config (its sha256 is the image ID) and a ``docker load``-able archive.

The config is canonical JSON (sorted keys, no spaces) with every date set from the epoch; ``docker load`` keeps
those bytes as they are and checks each layer against its diff_id, so the ID is known before the engine sees it.
The layers come from ``envkit.image.layers`` (re-exported here: ``oci.write_layer``, ``oci.write_layer_from_tar``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from envkit.errors import ImageArchiveError
from envkit.image.layers import (
    COPY_BUFSIZE,
    ENCODING,
    LAYER_FORMAT,
    LayerBlob,
    _HashingWriter,
    _safe_name,
    write_layer,
    write_layer_from_tar,
)

__all__ = [
    "DockerArchive",
    "LayerBlob",
    "archive_chunks",
    "present_layer",
    "canonical_json",
    "history_entry",
    "image_config",
    "image_id",
    "read_docker_archive",
    "rfc3339",
    "write_docker_archive",
    "write_layer",
    "write_layer_from_tar",
]
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5": "zstd", b"BZ": "bzip2", b"\xfd7": "xz"}


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


# --- config -------------------------------------------------------------------------------------------------------
def rfc3339(epoch: int) -> str:
    """The epoch as an RFC 3339 UTC date (the form Docker writes): 2023-11-14T22:13:20Z."""
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
                 os_name: str = "linux", variant: str | None = None, extra: Mapping[str, Any] | None = None) -> bytes:
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
        variant: the CPU variant (v8 for arm64), when the base has one.
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
    config = {
        "architecture": architecture,
        "config": container,
        "created": rfc3339(epoch),
        "history": history,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if variant:
        config["variant"] = variant
    return canonical_json(config)


def image_id(config_bytes: bytes) -> str:
    """The image ID Docker gives these config bytes."""
    return "sha256:" + hashlib.sha256(config_bytes).hexdigest()


# --- docker archives ----------------------------------------------------------------------------------------------
def write_docker_archive(dest: Path | BinaryIO, config_bytes: bytes, layers: Sequence[LayerBlob],
                         repo_tags: Sequence[str] | None = None, epoch: int = 0, omit: int = 0) -> str:
    """Write a ``docker load``-able archive (uncompressed, the same bytes for the same inputs).

    Layout: ``<config sha256>.json``, ``<diff_id hex>/layer.tar`` per layer, ``manifest.json``.

    ``docker load`` reads a layer's file only when the engine lacks that layer on top of the ones below it (Moby's
    ``tarexporter.Load`` looks the chain ID up first), so the first ``omit`` layers, which the engine has (the base
    of an image whose venv was just installed on it), are named in the manifest but not written.

    Args:
        dest: a file path, or a binary stream (e.g. the stdin of ``docker load``; nothing is sought).
        config_bytes: from ``image_config``.
        layers: bottom first; their diff_ids must be the config's.
        repo_tags: names ``docker load`` tags the image with.
        epoch: the mtime of the archive's own entries.
        omit: how many of the bottom layers to leave out (the engine has them, in this order).

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
            _write_archive(fh, config_name, config_bytes, layers, layer_names, manifest, epoch, omit)
    else:
        _write_archive(dest, config_name, config_bytes, layers, layer_names, manifest, epoch, omit)
    return image_id(config_bytes)


def present_layer(diff_id: str) -> LayerBlob:
    """A layer the engine has: named in an archive's manifest and config, never read (``omit`` it)."""
    return LayerBlob(diff_id=diff_id, path=Path(os.devnull))


def archive_chunks(config_bytes: bytes, layers: Sequence[LayerBlob], epoch: int = 0, omit: int = 0,
                   tags: Sequence[str] = (), chunk_size: int = COPY_BUFSIZE) -> Iterator[bytes]:
    """The bytes of :func:`write_docker_archive` as they are written, for streaming into ``docker load`` (no
    archive file on disk: a writer thread feeds a pipe).

    Raises:
        ImageArchiveError: as write_docker_archive (raised from the iterator, once the writer stopped).
    """
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def writer() -> None:
        try:
            with os.fdopen(write_fd, "wb", buffering=chunk_size) as out:
                write_docker_archive(out, config_bytes, layers, repo_tags=tags, epoch=epoch, omit=omit)
        except BrokenPipeError:  # the reader stopped early (the engine refused): its error is the one to report
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the reading side
            failure.append(exc)

    thread = threading.Thread(target=writer, name="envkit-archive-writer", daemon=True)
    thread.start()
    with os.fdopen(read_fd, "rb", buffering=0) as src:
        while chunk := src.read(chunk_size):
            yield chunk
    thread.join()
    if failure:
        raise failure[0]


def _write_archive(fh: BinaryIO, config_name: str, config_bytes: bytes, layers: Sequence[LayerBlob],
                   layer_names: list[str], manifest: list, epoch: int, omit: int = 0) -> None:
    # Mode "w" on a position-counting wrapper writes straight through; stream mode ("w|") re-buffers in 10 KiB
    # slices and copies a 1 GB layer several times over.
    with tarfile.open(fileobj=_HashingWriter(fh, hashing=False), mode="w", format=LAYER_FORMAT, encoding=ENCODING,
                      copybufsize=COPY_BUFSIZE) as tar:
        _add_bytes(tar, config_name, config_bytes, epoch)
        written: set[str] = set(layer_names[:omit])
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
