"""The base an image is built on, on the engine and known to envkit: made from pinned .debs, pulled, or found.

The assembly needs two things of a base: the image on the engine (the venv is installed in a container of it, and
``docker load`` of the final image reuses its layers) and its config (diff_ids, history, ENV and the rest, which
the final config is written over). Both are kept in envkit's cache, one folder per base, written once and renamed
into place:

- ``debian``: ``<cache>/bases/<key>/`` holds ``config.json`` and ``layer.tar`` as :mod:`envkit.image.debian`
  made them; the key hashes the recipe, suite, epoch, requested packages, architecture and every pin. A base
  missing from the engine is loaded from there (seconds), or made (about a minute) when the cache lacks it too.
- ``registry``: pulled by digest when the engine lacks it; its config comes from ``docker save`` (the exact bytes
  the image ID is the hash of) and is kept as ``<cache>/bases/<image ID>/config.json``.
- ``image`` (schema-1 locks): must be on the engine, by ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from envkit.engine import ContainerSpec, Engine
from envkit.errors import EnvkitError, ImageNotFoundError, RegistryError, SpecError
from envkit.image import oci
from envkit.lock.model import Lockfile
from envkit.settings import cache_dir, deb_mirrors

BASE_RECIPE = 1  # bumped when make_rootfs or base_config change what they write
Step = Callable[[str], None]


@dataclass(frozen=True)
class ReadyBase:
    """A base on the engine: its ID, its config, its layers (files only for a base envkit made), what was done."""

    image_id: str
    archive: oci.DockerArchive
    how: str
    mmdebstrap: str | None = None  # the version that made a Debian base here

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.archive.layers]


def bases_dir() -> Path:
    return cache_dir() / "bases"


def debian_key(lock: Lockfile) -> str:
    """The cache key of a lock's Debian base: everything that decides its bytes."""
    assert lock.base.debian is not None
    data = {"recipe": BASE_RECIPE, "epoch": lock.epoch, "arch": lock.platform.docker_arch,
            **asdict(lock.base.debian)}
    return hashlib.sha256(oci.canonical_json(data)).hexdigest()


def ensure_base(engine: Engine, lock: Lockfile, work: Path, *, fresh: bool = False, step: Step = lambda _m: None,
                ) -> ReadyBase:
    """The lock's base on ``engine``, made, loaded, pulled or found.

    Args:
        work: a scratch folder of the caller's, kept until the image is assembled.
        fresh: make a Debian base again from its .debs, in ``work``, whatever the cache holds (``--check``).

    Raises:
        BaseImageError, FetchError, HashMismatchError: making a Debian base failed (a .deb no source has is named).
        RegistryError: a registry base cannot be pulled (its digest is gone, or the registry is unreachable).
        ImageNotFoundError: a local base (schema-1 lock) is not on this engine.
    """
    if lock.base.kind == "debian":
        return _debian(engine, lock, work, fresh, step)
    if lock.base.kind == "registry":
        return _registry(engine, lock, step)
    return _local(engine, lock)


# --- Debian -------------------------------------------------------------------------------------------------------
def _debian(engine: Engine, lock: Lockfile, work: Path, fresh: bool, step: Step) -> ReadyBase:
    key = debian_key(lock)
    entry = bases_dir() / key
    if fresh:
        made = _make_debian(lock, work / "base", step)
        return _on_engine(engine, made, lock, key, f"made again from {_debs(lock)} (--check)")
    if (entry / "config.json").is_file() and (entry / "layer.tar").is_file():
        cached = _read_entry(entry)
        present = engine.find_image(cached.image_id) is not None
        return _on_engine(engine, cached, lock, key, "cached" if present else "loaded from envkit's cache")
    step(f"making the Debian {lock.base.debian.suite} base from {_debs(lock)} (not in envkit's cache)")
    made = _make_debian(lock, work / "base", step)
    bases_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=bases_dir()))
    for name in ("config.json", "layer.tar", "meta.json"):
        os.replace(work / "base" / name, tmp / name)
    try:
        os.rename(tmp, entry)  # the whole folder or nothing; another build may have put it there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return _on_engine(engine, _read_entry(entry), lock, key, f"made from {_debs(lock)}")


def _debs(lock: Lockfile) -> str:
    return f"{len(lock.base.debian.debs)} pinned .debs"


def _make_debian(lock: Lockfile, folder: Path, step: Step) -> ReadyBase:
    from envkit.image.debian import base_config, make_rootfs
    from envkit.lock.debian import DEFAULT_MIRRORS, host_sources, mmdebstrap_version

    deb = lock.base.debian
    folder.mkdir(parents=True, exist_ok=True)
    mirrors = list(dict.fromkeys([*(s.uri for s in host_sources(deb.suite)), *DEFAULT_MIRRORS, *deb_mirrors()]))
    rootfs = make_rootfs(list(deb.debs), cache_dir(), lock.epoch, folder / "layer.tar", suite=deb.suite,
                         mirrors=mirrors, arch=lock.platform.docker_arch, step=step)
    config = base_config(rootfs, deb.suite, lock.epoch, packages=deb.packages, arch=lock.platform.docker_arch)
    (folder / "config.json").write_bytes(config)
    version = mmdebstrap_version()
    (folder / "meta.json").write_text(json.dumps({"mmdebstrap": version, "seconds": round(rootfs.seconds, 1)}))
    return ReadyBase(oci.image_id(config), oci.DockerArchive(config, json.loads(config), [rootfs.layer]), "made",
                     version)


def _read_entry(entry: Path) -> ReadyBase:
    config = (entry / "config.json").read_bytes()
    parsed = json.loads(config)
    layer = entry / "layer.tar"
    blob = oci.LayerBlob(diff_id=parsed["rootfs"]["diff_ids"][0], path=layer, size=layer.stat().st_size)
    try:
        version = json.loads((entry / "meta.json").read_text()).get("mmdebstrap")
    except (OSError, ValueError):
        version = None
    return ReadyBase(oci.image_id(config), oci.DockerArchive(config, parsed, [blob]), "cached", version)


def _on_engine(engine: Engine, base: ReadyBase, lock: Lockfile, key: str, how: str) -> ReadyBase:
    """``base`` loaded into the engine unless it has it already."""
    if engine.find_image(base.image_id) is None:
        tag = f"envkit/base:{lock.base.debian.suite}-{key[:12]}"  # a name of its own: no other base's tag moves
        chunks = oci.archive_chunks(base.archive.config_bytes, base.archive.layers, epoch=lock.epoch, tags=[tag])
        loaded = engine.load(chunks)
        if base.image_id not in loaded:
            raise EnvkitError(f"docker load of the base gave {', '.join(loaded) or 'nothing'}, envkit wrote "
                              f"{base.image_id}", hint="report this: the engine changed the image config")
    return ReadyBase(base.image_id, base.archive, how, base.mmdebstrap)


# --- registry and local bases -------------------------------------------------------------------------------------
def _registry(engine: Engine, lock: Lockfile, step: Step) -> ReadyBase:
    ref = lock.base.pull_ref
    image = engine.find_image(ref) or (engine.find_image(lock.base.image_id) if lock.base.image_id else None)
    how = "cached"
    if image is None:
        step(f"pulling the base {ref}")
        try:
            image_id = engine.pull(ref)
        except RegistryError as exc:
            gone = any(w in exc.message.lower() for w in ("manifest unknown", "not found", "does not exist"))
            raise RegistryError(
                f"the base {ref} is {'gone from its registry' if gone else 'not available'} ({exc.message})",
                hint="the lock pins a digest its registry no longer serves: lock the spec again to pin a current one"
                if gone else "check that the registry is reachable from the Docker engine") from exc
        how = f"pulled {ref}"
    else:
        image_id = image.id
    if lock.base.image_id and image_id != lock.base.image_id:
        raise RegistryError(f"the base {ref} pulled as image {image_id[:19]}, the lock recorded "
                            f"{lock.base.image_id[:19]}", hint="the registry serves another image under that digest "
                                                               "(another platform?); do not build on it")
    if lock.base.image_id is None:
        _check_python(engine, image_id, lock)
    return ReadyBase(image_id, _saved_config(engine, image_id), how)


def _local(engine: Engine, lock: Lockfile) -> ReadyBase:
    image = engine.find_image(lock.base.digest or "")
    if image is None:
        raise ImageNotFoundError(
            f"base image {lock.base.ref} ({(lock.base.digest or '?')[:19]}) pinned by lock {lock.name} is not on "
            "this engine: the lock pins a local image by ID (schema 1), which builds only where that image exists",
            hint="lock the spec again (`envkit lock SPEC`) to pin a Debian base by its .debs or a registry base by "
                 "digest, which build anywhere")
    return ReadyBase(image.id, _saved_config(engine, image.id), "cached")


def _check_python(engine: Engine, image_id: str, lock: Lockfile) -> None:
    """A registry base locked without being pulled: check that its python3 is the lock's."""
    spec = ContainerSpec(image=image_id, command=["python3", "-c", "import sys;print('%d.%d' % sys.version_info[:2])"])
    try:
        found = engine.run_output(spec).decode().strip()
    except EnvkitError as exc:
        raise SpecError(f"the base {lock.base.ref} has no working python3 ({exc.message})") from exc
    if found != lock.python:
        raise SpecError(f"the base {lock.base.ref} runs Python {found}, the lock {lock.name} is for {lock.python}",
                        hint="pin a base image of the lock's Python")


def _saved_config(engine: Engine, image_id: str) -> oci.DockerArchive:
    """The base's config as the engine stores it (its sha256 is the image ID), from ``docker save``, cached; its
    layers are named by diff_id only: ``docker load`` of the final image takes them from the engine."""
    entry = bases_dir() / image_id.split(":", 1)[-1]
    path = entry / "config.json"
    if path.is_file():
        config = path.read_bytes()
    else:
        config = _config_from_save(engine.save(image_id), image_id)
        entry.mkdir(parents=True, exist_ok=True)
        from envkit.atomic import atomic_write

        with contextlib.suppress(OSError):  # a cache miss only costs another `docker save`
            atomic_write(path, config, durable=False)
    parsed = json.loads(config)
    layers = [oci.present_layer(d) for d in parsed.get("rootfs", {}).get("diff_ids") or []]
    return oci.DockerArchive(config, parsed, layers)


def _config_from_save(chunks: Iterator[bytes], image_id: str) -> bytes:
    """The config file of a ``docker save`` stream, read on the fly (the layers stream past, unwritten)."""
    with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json") and member.name != "manifest.json" \
                    and "/" not in member.name:
                data = tar.extractfile(member).read()
                if "sha256:" + hashlib.sha256(data).hexdigest() == image_id:
                    return data
    raise ImageNotFoundError(f"docker save of {image_id[:19]} held no config of that ID")


class _ChunkReader:
    """A read-only file over an iterator of byte chunks (what ``tarfile``'s stream mode reads, 10 KiB at a time:
    the chunk is sliced by offset, not copied per read)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.chunk, self.pos = iter(chunks), b"", 0

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        want = size if size >= 0 else float("inf")
        while want > 0:
            if self.pos >= len(self.chunk):
                self.chunk, self.pos = next(self.chunks, b""), 0
                if not self.chunk:
                    break
            take = self.chunk[self.pos:self.pos + int(min(want, len(self.chunk) - self.pos))]
            self.pos += len(take)
            want -= len(take)
            parts.append(take)
        return b"".join(parts)


# --- ahead of a build ---------------------------------------------------------------------------------------------
def debian_base_today(engine: Engine, suite: str, python: str, *, tag: str | None = None,
                      step: Step = lambda _m: None, compiler: bool = False) -> tuple[ReadyBase, Lockfile]:
    """``envkit base debian``: resolve the suite's .debs today, make the base from them, load and tag it.

    Returns:
        The base, and a lock of it (no packages) whose ``base`` a spec naming ``envkit/base:<suite>-py<X.Y>`` would
        pin today.

    Raises:
        SpecError (suite or Python), BaseImageError (mmdebstrap), FetchError / HashMismatchError (a .deb).
    """
    from envkit.lock.basepin import debian_ref, pin_base
    from envkit.lock.locking import source_date_epoch
    from envkit.lock.model import Platform

    raw = str(engine.facts().get("arch"))
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(raw, raw)
    platform = Platform("linux", arch, f"{arch}-manylinux_2_28")
    ref = debian_ref(suite, python, compiler)
    pinned = pin_base(ref, python, platform.docker_arch, lambda: engine, cache_dir(), step)
    lock = Lockfile(name="base", python=python, platform=platform, base=pinned.base, requirements=(), sources={},
                    environment={}, packages=(), generated_by="envkit base", epoch=source_date_epoch())
    with tempfile.TemporaryDirectory(prefix="base-", dir=scratch()) as tmp:
        base = ensure_base(engine, lock, Path(tmp), step=step)
    engine.tag(base.image_id, tag or ref)
    return base, lock


def scratch() -> Path:
    """envkit's scratch folder: under its cache, so wheels hard-link in and the engine can bind-mount it."""
    folder = cache_dir() / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
