"""The lockfile: a strict, versioned model with its own content hash.

A lockfile pins everything an image is built from: the base image by content (a Debian base by its .debs, a
registry base by its manifest digest, or, from schema 1, a local image by ID), the Python version, the target
platform, every package (transitive ones too) by version, wheel file name and sha256 (its URL is only a hint), and
the determinism environment the image will carry. It also records the image IDs a build of it is expected to give,
per CPU profile.

``content_sha256`` is the sha256 of the canonical JSON of every field but three: itself, ``images`` and
``image_parts``. Those two are the expected *outputs* of a build, not inputs: the image carries the lock's hash in a
label, so an ID inside that hash would make the ID depend on itself. Leaving them out also lets ``envkit build
--pin`` record them without changing the lock's identity (its build key, and the hash runs record). A hand edit of
an expected ID is harmless: every build compares against it and says when it differs.

Unknown keys are refused, the schema version is a field, older versions are upgraded on read
(:mod:`envkit.lock.upgrade`), and a newer one says which envkit reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from envkit.atomic import atomic_write
from envkit.errors import LockfileError

SCHEMA_VERSION = 2
# SOURCE_DATE_EPOCH of a lock made without one in the environment: the dates envkit writes into images mean nothing
# but must be the same everywhere (2023-11-14T22:13:20Z, a little after Debian 12.2).
DEFAULT_EPOCH = 1_700_000_000
BASE_KINDS = ("debian", "registry", "image")
NOT_HASHED = ("content_sha256", "images", "image_parts")  # the hash itself and the expected outputs


@dataclass(frozen=True)
class PinnedPackage:
    name: str
    version: str
    filename: str  # what the package is, with sha256; the URL is where it was last seen
    url: str | None
    sha256: str


@dataclass(frozen=True)
class DebPin:
    """One .deb by content: a package of a Debian base."""

    name: str
    version: str
    arch: str
    filename: str  # the pool path, relative to a mirror's root: pool/main/p/python3.11/...
    sha256: str
    size: int

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"


@dataclass(frozen=True)
class DebianBase:
    """A Debian base made by envkit from exactly these .debs with mmdebstrap, dated at the lock's ``epoch``."""

    suite: str
    packages: tuple[str, ...]  # what was asked for on top of Debian's minimal set
    mmdebstrap: str  # the version that resolved the pins (another one may lay files out differently)
    debs: tuple[DebPin, ...]


@dataclass(frozen=True)
class BaseImage:
    """The base image, by content.

    - ``debian``: made by envkit from ``debian.debs`` (``digest`` is None: the .debs are the pin);
    - ``registry``: ``ref`` pulled by its manifest ``digest`` (``image_id``: the ID that pull gave when locked);
    - ``image``: a local image by ID (``digest``), from schema 1: it builds only where that image exists.
    """

    ref: str  # debian: the name the made base gets; registry: repository[:tag]; image: the local name
    digest: str | None  # registry: manifest digest; image: image ID; debian: None
    python: str  # the Python inside the base (3.11.2; "3.11" for a registry base not pulled when locked)
    kind: str = "image"
    image_id: str | None = None
    source: str | None = None  # image: how it was made, e.g. "envkit base debian bookworm --python 3.11"
    debian: DebianBase | None = None

    @property
    def pull_ref(self) -> str:
        """``repository@sha256:...`` (a tag next to a digest is dropped: the digest decides)."""
        name = self.ref.split("@", 1)[0]
        last = name.rsplit("/", 1)[-1]
        if ":" in last:
            name = name[: len(name) - len(last)] + last.split(":", 1)[0]
        return f"{name}@{self.digest}"

    def describe(self) -> str:
        """One phrase for messages: what the base is and how it is pinned."""
        if self.kind == "debian" and self.debian is not None:
            return f"Debian {self.debian.suite} base from {len(self.debian.debs)} pinned .debs"
        if self.kind == "registry":
            return f"registry base {self.pull_ref}"
        return f"local base image {self.ref} ({(self.digest or '?')[:19]})"


@dataclass(frozen=True)
class ImageParts:
    """What the expected image IDs were built from: enough to say which part of a build differs."""

    recipe: str  # sha256 of envkit's version, its in-image files and the assembly recipe
    base_layers: tuple[str, ...]  # the base's diff_ids
    venv_layer: str  # the venv layer's diff_id (the same for every CPU profile)


@dataclass(frozen=True)
class Platform:
    os: str
    arch: str
    tag: str  # uv's target, e.g. x86_64-manylinux_2_28

    @property
    def docker_arch(self) -> str:
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(self.arch, self.arch)


@dataclass(frozen=True)
class Lockfile:
    name: str
    python: str
    platform: Platform
    base: BaseImage
    requirements: tuple[str, ...]
    sources: dict[str, list[str]]  # index_url / indexes / find_links: the spec's public ones
    environment: dict[str, str]
    packages: tuple[PinnedPackage, ...]
    generated_by: str
    epoch: int = DEFAULT_EPOCH  # SOURCE_DATE_EPOCH: every file date and config date in the base and the image
    images: dict[str, str] = field(default_factory=dict)  # CPU profile -> expected image ID
    image_parts: ImageParts | None = None
    schema_version: int = SCHEMA_VERSION
    content_sha256: str = field(default="")

    def body(self) -> dict[str, Any]:
        """Every hashed field, in canonical form."""
        d = asdict(self)
        for key in NOT_HASHED:
            d.pop(key)
        d["requirements"] = list(self.requirements)
        d["packages"] = [asdict(p) for p in self.packages]
        return d

    def computed_sha256(self) -> str:
        canonical = json.dumps(self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def sealed(self) -> Lockfile:
        """The same lock with its content hash filled in."""
        return replace(self, content_sha256=self.computed_sha256())

    def with_images(self, images: dict[str, str], parts: ImageParts | None) -> Lockfile:
        """The same lock (the same content hash) with these expected image IDs."""
        return replace(self, images=dict(sorted(images.items())), image_parts=parts)

    def to_dict(self) -> dict[str, Any]:
        """The lock as its YAML holds it: what it is and what it should build first, then the pins."""
        body = self.body()
        d: dict[str, Any] = {"schema_version": self.schema_version, "content_sha256": self.content_sha256}
        for key in ("name", "python", "platform", "epoch"):
            d[key] = body.pop(key)
        d["images"] = dict(self.images)
        d["image_parts"] = asdict(self.image_parts) if self.image_parts else None
        base = body.pop("base")
        d["base"] = {k: base[k] for k in ("kind", "ref", "digest", "image_id", "python", "source", "debian")}
        d.update({k: v for k, v in body.items() if k != "schema_version"})
        return _plain(d)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the YAML holds only plain lists and mappings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_lockfile(lock: Lockfile) -> str:
    """YAML text of a sealed lock, keys in a stable, readable order."""
    data = lock.sealed().to_dict()
    header = (
        "# envkit lockfile: generated by `envkit lock`; do not edit by hand (content_sha256 checks it).\n"
        "# images: the image IDs `envkit build` is expected to give; refresh them with `envkit build LOCK --pin`.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)


def write_lockfile(lock: Lockfile, path: Path) -> None:
    """Write atomically: never a half-written lock, and the old one intact if the write fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, dump_lockfile(lock))


def load_lockfile(path: Path) -> Lockfile:
    """Read, upgrade, validate and hash-check a lockfile.

    Raises:
        LockfileError: missing, malformed, of a newer schema version (the message says which envkit reads it),
            unknown keys, a value of the wrong type or shape (a wheel file name that is not a bare wheel name of
            its package, a control character anywhere), a package without a hash, or a content hash that does not
            match (edited by hand).
    """
    from envkit.lock.yamlfile import read_yaml

    data = read_yaml(path, LockfileError, "lockfile", missing_hint="create one with `envkit lock SPEC.yaml`",
                     invalid_hint="regenerate it with `envkit lock SPEC.yaml`")
    return parse_lockfile(data, source=str(path))


def parse_lockfile(data: Any, source: str = "lockfile") -> Lockfile:
    """Validate a lockfile's parsed YAML (upgraded to this schema first): its shape and types, its content hash,
    then each value.

    A lock may come from someone else, and anyone can recompute its content hash, so the hash only catches edits
    by hand: each value is then checked for what it becomes (a cache path, a URL, an image config, a tag).
    """
    from envkit.lock.checks import check_values
    from envkit.lock.fields import lock_from_dict
    from envkit.lock.upgrade import upgraded

    data, was = upgraded(data, source)
    lock = lock_from_dict(data, source)
    if was != SCHEMA_VERSION:
        lock = lock.sealed()  # checked under its own schema's hash by the upgrade; a new document now
    elif lock.content_sha256 != lock.computed_sha256():
        raise LockfileError(
            f"{source}: content hash does not match its content (the lockfile was edited by hand)",
            hint="regenerate it with `envkit lock SPEC.yaml` instead of editing it",
        )
    check_values(lock, source)
    return lock


def check_values(lock: Lockfile, source: str = "lockfile") -> None:
    """Each value of ``lock`` has the shape its use needs (see :func:`envkit.lock.checks.check_values`)."""
    from envkit.lock.checks import check_values as check

    check(lock, source)
