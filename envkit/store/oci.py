"""Artifacts in an OCI registry over the distribution API itself: blobs and one manifest, nothing trusted coming in.

An artifact is an OCI image manifest (``application/vnd.oci.image.manifest.v1+json``) with an ``artifactType``, a
config blob of the caller's, and one layer per file, named by its ``org.opencontainers.image.title`` annotation.
One blob per file: the registry keeps each content once, so a second run with the same code or lock uploads only what
changed. The manifest is canonical JSON (sorted keys, layers sorted by name, no timestamps), so pushing the same files
twice gives the same digest. Debian's docker-registry 2.8 accepts this form (and custom config and layer media types)
but refuses the OCI 1.1-rc artifact manifest, has no referrers API, and refuses manifests over 4 MiB.

Pulling trusts nothing the registry says: the manifest must hash to the digest the user gave, every blob must hash to
its descriptor while it streams (and may not be longer), names must be safe relative paths, and the file count and
total size are capped before and during the download. Problems of reach or of the registry's answers are
:class:`RegistryError`; content that is altered, unsafe or too large is :class:`BundleError`.

The HTTP client lives in :mod:`envkit.store.ociclient`; this module is the artifact's format and its checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from envkit.errors import BundleError, RegistryError
from envkit.hashing import sha256_file
from envkit.manifest import is_safe_relpath
from envkit.store.ociclient import DIGEST_PATTERN, OCI_MANIFEST, TAG_PATTERN, Reference, RegistryClient, parse_reference

ARTIFACT_TYPE = "application/vnd.envkit.run.v1"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"  # OCI 1.1's config for artifacts with no config of their own
FILE_MEDIA_TYPE = "application/vnd.envkit.file.v1"
TITLE = "org.opencontainers.image.title"
MODE = "io.envkit.file.mode"  # "0755" for files with the owner's execute bit, else "0644"; nothing else is kept
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # docker-registry 2.8 answers "request body too large" past this
MAX_CONFIG_BYTES = 1024 * 1024
_DIGEST_RE = re.compile(DIGEST_PATTERN)

Progress = Callable[[int, int], None]  # (bytes just moved, total bytes of the transfer), from worker threads
# docker-registry takes tens of milliseconds to answer each upload (it writes several small files per blob): a run's
# many small files go four at a time, each worker on its own kept-alive connection.
_WORKERS = 4
_T = TypeVar("_T")
_DONE = object()


class PulledArtifact(NamedTuple):
    manifest: dict[str, Any]  # the manifest as parsed (its bytes hash to the reference's digest)
    files: list[tuple[str, Path]]  # (name, file under dest_dir), in manifest order
    config: bytes  # the config blob (checked against its descriptor)


@dataclass(frozen=True)
class Layer:
    """One file of an artifact, as its manifest describes it."""

    name: str
    digest: str
    size: int
    executable: bool


def is_safe_name(name: object) -> bool:
    """Whether ``name`` may name a file of an artifact: a safe relative path (:func:`envkit.manifest.is_safe_relpath`)
    of at most 1024 characters, with no control character (names end up in messages and annotations)."""
    return is_safe_relpath(name) and len(name) <= 1024 and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def push_artifact(registry_repo: str, files: Sequence[tuple[str, Path]], annotations: Mapping[str, str] | None = None,
                  artifact_type: str = ARTIFACT_TYPE, config: bytes = b"{}", config_media_type: str = EMPTY_MEDIA_TYPE,
                  *, tag: str | None = None, known_sha256: Mapping[str, str] | None = None,
                  on_progress: Progress | None = None) -> str:
    """Upload the files (one blob each, skipping blobs the registry has) and their manifest.

    Args:
        registry_repo: ``REGISTRY/REPO`` (plain HTTP for a loopback registry, HTTPS otherwise).
        files: ``(name, path)`` pairs; names are safe relative paths, unique; paths are regular files.
        annotations: the manifest's annotations (keep them free of timestamps to keep the digest stable).
        artifact_type: the manifest's ``artifactType``.
        config: the config blob; ``config_media_type`` its media type.
        tag: also point this tag at the manifest.
        known_sha256: hex sha256 of some files by name, not hashed again: the registry checks the bytes on upload.
        on_progress: called with (bytes uploaded, total bytes).

    Returns:
        ``REGISTRY/REPO@sha256:...`` of the manifest.

    Raises:
        RegistryError: unreachable, refusing, asking for a login, or the manifest is too large for it.
        BundleError: an unsafe or duplicate name, a file that is missing or changed while being pushed.
    """
    ref = parse_reference(registry_repo, allow_tag=False, allow_digest=False)
    if tag is not None and not re.fullmatch(TAG_PATTERN, tag):
        raise RegistryError(f"{tag[:140]!r} is not a registry tag (letters, digits, '_', '.', '-'; at most 128)")
    known = known_sha256 or {}
    layers = sorted((_describe(name, Path(path), known.get(name)) for name, path in files), key=lambda t: t[0].name)
    _check_names([layer.name for layer, _ in layers])
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    body = canonical_manifest([layer for layer, _ in layers], annotations or {}, artifact_type,
                              {"mediaType": config_media_type, "digest": config_digest, "size": len(config)})
    if len(body) > MAX_MANIFEST_BYTES:
        raise RegistryError(f"the manifest of {len(layers)} files is {len(body) >> 10} KiB; registries refuse "
                            f"manifests over {MAX_MANIFEST_BYTES >> 20} MiB",
                            hint="carry fewer files (leave some out of the project with .envkitignore)")
    total = sum(layer.size for layer, _ in layers) + len(config)
    advance = (lambda n: on_progress(n, total)) if on_progress else None
    unique = list({layer.digest: (layer, path) for layer, path in reversed(layers)}.values())  # first name wins
    if advance:
        advance(total - len(config) - sum(layer.size for layer, _ in unique))  # duplicates travel once
    _each(ref.registry, unique, lambda client, item: client.put_blob(
        ref.repository, item[1], item[0].digest, item[0].name, advance, item[0].size))
    with RegistryClient(ref.registry) as client:
        client.put_blob(ref.repository, config, config_digest, "the config", advance)
        digest = client.put_manifest(ref.repository, body)
        if tag is not None:
            client.put_manifest(ref.repository, body, tag)
    return str(Reference(ref.registry, ref.repository, digest=digest))


def canonical_manifest(layers: Sequence[Layer], annotations: Mapping[str, str], artifact_type: str,
                       config: Mapping[str, Any]) -> bytes:
    """The manifest's bytes: sorted keys, no whitespace, layers in the given order; the same input, the same digest."""
    manifest: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type, "config": dict(config),
        "layers": [{"mediaType": FILE_MEDIA_TYPE, "digest": layer.digest, "size": layer.size,
                    "annotations": {TITLE: layer.name, MODE: "0755" if layer.executable else "0644"}}
                   for layer in layers],
    }
    if annotations:
        manifest["annotations"] = {str(k): str(v) for k, v in annotations.items()}
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def pull_artifact(ref: str, dest_dir: Path, max_total_bytes: int, max_files: int, *,
                  artifact_type: str | None = ARTIFACT_TYPE, allow: Callable[[str], bool] | None = None,
                  on_progress: Progress | None = None) -> PulledArtifact:
    """Fetch an artifact by digest into ``dest_dir`` (absent or empty), checking everything on the way.

    Args:
        ref: ``REGISTRY/REPO@sha256:...``; the manifest must hash to that digest.
        dest_dir: where the files go, each at its name; on any error it is left empty.
        max_total_bytes, max_files: refused when the manifest declares more, or the registry sends more.
        artifact_type: the ``artifactType`` required (None: any).
        allow: names this artifact may hold (others are refused before anything is downloaded).
        on_progress: called with (bytes downloaded, total bytes).

    Raises:
        RegistryError: unreachable, refusing, no such manifest. BundleError: digest mismatch, unsafe or unexpected
            names, too many files or bytes, a blob altered in the registry (named).
    """
    parsed = parse_reference(ref, allow_tag=False, require_digest=True)
    assert parsed.digest is not None
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        if any(dest_dir.iterdir()):
            raise BundleError(f"{dest_dir} is not empty; the artifact is pulled into an empty folder")
    except OSError as exc:
        raise BundleError(f"cannot use {dest_dir} for the pull: {exc.strerror or exc}") from exc
    try:
        with RegistryClient(parsed.registry) as client:
            body = client.get_manifest(parsed.repository, parsed.digest, MAX_MANIFEST_BYTES)
            if body is None:
                raise RegistryError(f"{parsed.registry}/{parsed.repository} has no manifest {parsed.digest}",
                                    hint="check the reference; `envkit push` prints it")
            manifest, config_desc, layers = read_manifest(body, parsed.digest, ref, artifact_type)
            _check_caps(layers, ref, max_total_bytes, max_files)
            for layer in layers:
                if allow is not None and not allow(layer.name):
                    raise BundleError(f"{ref} holds {layer.name!r}, which is not part of an envkit run",
                                      hint="do not use this artifact; it was not written by envkit push")
            config = client.get_blob_bytes(parsed.repository, config_desc.digest, config_desc.size, "the config")
        total = sum(layer.size for layer in layers)
        advance = (lambda n: on_progress(n, total)) if on_progress else None
        first = {layer.digest: layer for layer in reversed(layers)}  # each content fetched once, under its first name
        _each(parsed.registry, list(first.values()), lambda client, layer: _write_layer(
            client, parsed.repository, layer, dest_dir / layer.name, None, advance))
        for layer in layers:
            if first[layer.digest] is not layer:
                _write_layer(None, parsed.repository, layer, dest_dir / layer.name, dest_dir / first[layer.digest].name,
                             advance)
        files = [(layer.name, dest_dir / layer.name) for layer in layers]
    except BaseException:
        _empty(dest_dir)
        raise
    return PulledArtifact(manifest, files, config)


def read_manifest(body: bytes, digest: str, ref: str, artifact_type: str | None
                  ) -> tuple[dict[str, Any], Layer, list[Layer]]:
    """Check a manifest's bytes against the digest asked for and its form; returns it, its config and its files.

    Raises:
        BundleError: the bytes hash to another digest, are not an OCI manifest of ``artifact_type``, or describe
            files with unsafe, duplicate or clashing names, or malformed digests or sizes.
    """
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise BundleError(f"the registry's manifest for {ref} hashes to {actual[:19]}..., not to the digest asked for",
                          hint="the registry altered or substituted the artifact; do not use it")
    try:
        manifest = json.loads(body)
    except ValueError as exc:
        raise BundleError(f"the manifest of {ref} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2 \
            or manifest.get("mediaType") != OCI_MANIFEST:
        raise BundleError(f"{ref} is not an OCI image manifest")
    if artifact_type is not None and manifest.get("artifactType") != artifact_type:
        raise BundleError(f"{ref} is not an envkit artifact (artifactType {str(manifest.get('artifactType'))[:80]!r},"
                          f" expected {artifact_type!r})", hint="give the digest that `envkit push` printed")
    config = _descriptor(manifest.get("config"), ref, "config")
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise BundleError(f"the manifest of {ref} has no list of layers")
    layers = [_descriptor(item, ref, f"layer {i}") for i, item in enumerate(raw_layers)]
    _check_names([layer.name for layer in layers])
    return manifest, config, layers


# --- helpers -----------------------------------------------------------------------------------------------------
def _describe(name: str, path: Path, sha256: str | None) -> tuple[Layer, Path]:
    if not is_safe_name(name):
        raise BundleError(f"refusing to push a file named {name!r}: not a safe relative path")
    try:
        st = os.stat(path, follow_symlinks=False)
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{name} ({path}) is not a regular file; links are not pushed as blobs")
        digest = sha256 if sha256 is not None else sha256_file(path)
    except OSError as exc:
        raise BundleError(f"cannot read {name} ({path}): {exc.strerror or exc}") from exc
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BundleError(f"{name}: {digest!r} is not a sha256")
    return Layer(name, "sha256:" + digest, st.st_size, bool(st.st_mode & 0o100)), path


def _check_names(names: Sequence[str]) -> None:
    """Names are safe, unique, and none is the folder of another (which could not be written)."""
    seen: set[str] = set()
    for name in names:
        if not is_safe_name(name):
            raise BundleError(f"the artifact names a file {name[:200]!r}, which is not a safe relative path"
                              if isinstance(name, str) else "the artifact has a file without a name",
                              hint="do not use this artifact; it was not written by envkit push")
        if name in seen:
            raise BundleError(f"the artifact names {name!r} twice")
        seen.add(name)
    for name in names:
        parts = name.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in seen:
                raise BundleError(f"the artifact names {'/'.join(parts[:i])!r} both as a file and as a folder")


def _descriptor(item: Any, ref: str, what: str) -> Layer:
    if not isinstance(item, dict):
        raise BundleError(f"the manifest of {ref}: {what} is not an object")
    digest, size = item.get("digest"), item.get("size")
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise BundleError(f"the manifest of {ref}: {what} has a malformed digest {str(digest)[:80]!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BundleError(f"the manifest of {ref}: {what} has a malformed size {str(size)[:40]!r}")
    annotations = item.get("annotations") or {}
    if not isinstance(annotations, dict):
        raise BundleError(f"the manifest of {ref}: {what} has malformed annotations")
    name = annotations.get(TITLE, what) if what != "config" else "config"
    if not isinstance(name, str):
        raise BundleError(f"the manifest of {ref}: {what} has a title that is not a string")
    return Layer(name, digest, size, annotations.get(MODE) == "0755")


def _check_caps(layers: Sequence[Layer], ref: str, max_total_bytes: int, max_files: int) -> None:
    if len(layers) > max_files:
        raise BundleError(f"{ref} holds {len(layers)} files, more than the {max_files} allowed",
                          hint="raise the limit if you trust this artifact")
    total = sum(layer.size for layer in layers)
    if total > max_total_bytes:
        raise BundleError(f"{ref} holds {total / 2**20:.1f} MiB, more than the {max_total_bytes / 2**20:.1f} MiB "
                          "allowed", hint="raise the limit if you trust this artifact")


def _each(registry: str, items: Sequence[_T], fn: Callable[[RegistryClient, _T], object]) -> None:
    """``fn(client, item)`` for every item on up to :data:`_WORKERS` connections; the first error stops the rest
    (each worker finishes the item in hand) and is raised."""
    pending = iter(items)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with RegistryClient(registry) as client:
                while not errors:
                    with lock:
                        item = next(pending, _DONE)
                    if item is _DONE:
                        return
                    fn(client, item)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
            errors.append(exc)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(_WORKERS, len(items)))]
    for t in workers:
        t.start()
    try:
        for t in workers:
            t.join()
    except BaseException as exc:  # Ctrl-C: the workers take no further item
        errors.append(exc)
        raise
    if errors:
        raise errors[0]


def _write_layer(client: RegistryClient | None, repository: str, layer: Layer, path: Path, same: Path | None,
                 advance: Callable[[int], None] | None) -> None:
    mode = 0o755 if layer.executable else 0o644
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        with open(fd, "wb") as out:
            if same is not None:  # the same content under two names: fetched once
                with open(same, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
                if advance:
                    advance(layer.size)
            else:
                assert client is not None
                client.get_blob(repository, layer.digest, layer.size, layer.name, out, advance)
        os.chmod(path, mode)  # the umask must not change what was recorded
    except OSError as exc:
        raise BundleError(f"cannot write {layer.name} to {path.parent}: {exc.strerror or exc}") from exc


def _empty(folder: Path) -> None:
    """Remove everything in ``folder`` (a failed pull leaves nothing half-checked behind)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
