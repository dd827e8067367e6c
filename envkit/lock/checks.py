"""What each value of a typed lock may look like, for what it becomes.

A lock may come from someone else, and anyone can recompute its content hash. Its values become cache paths (a
wheel's or a .deb's file name), URLs fetched (a mirror plus a pool path), an image reference pulled, image
config entries and tags: each is ``fullmatch``-checked here, and a control character anywhere is refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from envkit.errors import LockfileError
from envkit.lock.values import (
    DIGEST,
    ENV_NAME,
    FULL_PYTHON,
    IMAGE_REF,
    NAME,
    PLATFORM,
    PROJECT,
    SHA256,
    VERSION,
    has_control,
    shown,
    url_problem,
    wheel_filename_problem,
)

if TYPE_CHECKING:
    from envkit.lock.model import Lockfile

HOSTILE_HINT = "the lockfile was written by another tool or altered; regenerate it with `envkit lock SPEC.yaml`"
DEB_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")  # Debian policy 5.6.1
DEB_VERSION = re.compile(r"([0-9]{1,9}:)?[0-9][A-Za-z0-9.+~-]{0,99}")  # 5.6.12, epoch included
DEB_ARCH = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
# A pool path below a mirror's root: no '..', no leading '/', nothing but the characters pool names use.
POOL_PATH = re.compile(r"pool/(?:[A-Za-z0-9+~_-][A-Za-z0-9.+~_-]{0,127}/){1,6}[A-Za-z0-9+~_-][A-Za-z0-9.+~%_-]{0,254}"
                       r"\.deb")
SUITE = re.compile(r"[a-z]{2,32}")
TOOL_VERSION = re.compile(r"[0-9][0-9A-Za-z.+~-]{0,31}")
MAX_EPOCH = 2**32  # the year 2106: past it a tar header's mtime field does not fit


def check_values(lock: Lockfile, source: str = "lockfile") -> None:
    """Each value of ``lock`` has the shape its use needs; a control character anywhere is refused.

    Raises:
        LockfileError: naming the value.
    """
    def text(value: str | None, what: str, pattern: re.Pattern[str] | None = None, expected: str = "") -> None:
        if value is None:
            return
        if pattern is not None and not pattern.fullmatch(value):
            raise LockfileError(f"{source}: {what} {shown(value)} {expected}", hint=HOSTILE_HINT)
        if has_control(value):
            raise LockfileError(f"{source}: {what} {shown(value)} contains a control character", hint=HOSTILE_HINT)

    text(lock.name, "lock name", NAME, "must be lowercase letters, digits, '.', '_' or '-'")
    text(lock.platform.os, "platform.os", re.compile("linux"), "is not linux")
    text(lock.platform.arch, "platform.arch", re.compile("x86_64|aarch64"), "is not x86_64 or aarch64")
    text(lock.platform.tag, "platform.tag", PLATFORM, "is not e.g. x86_64-manylinux_2_28")
    if not 0 <= lock.epoch < MAX_EPOCH:
        raise LockfileError(f"{source}: epoch {lock.epoch} is out of range", hint=HOSTILE_HINT)
    _check_base(lock, source, text)
    for profile, image_id in lock.images.items():
        text(profile, "images key", NAME, "is not a CPU profile name")
        text(image_id, f"images.{profile}", DIGEST, "is not sha256:<64 hex>")
    if lock.image_parts is not None:
        text(lock.image_parts.recipe, "image_parts.recipe", SHA256, "is not 64 hex digits")
        for i, diff_id in enumerate(lock.image_parts.base_layers):
            text(diff_id, f"image_parts.base_layers[{i}]", DIGEST, "is not sha256:<64 hex>")
        text(lock.image_parts.venv_layer, "image_parts.venv_layer", DIGEST, "is not sha256:<64 hex>")
    text(lock.generated_by, "generated_by")
    for i, req in enumerate(lock.requirements):
        text(req, f"requirements[{i}]")
    for key, values in lock.sources.items():
        text(key, "sources key")
        for value in values:
            text(value, f"sources value of {shown(key)}")
    for key, value in lock.environment.items():
        text(key, "environment variable name", ENV_NAME, "is not a variable name")
        text(value, f"environment value of {shown(key)}")
    for pkg in lock.packages:
        where = f"package {pkg.name if PROJECT.fullmatch(pkg.name) else shown(pkg.name)}"
        text(pkg.name, f"{where}: name", PROJECT, "is not a valid project name")
        text(pkg.version, f"{where}: version", VERSION, "is not a valid version")
        text(pkg.sha256, f"{where}: sha256", SHA256, "is malformed (64 lowercase hex digits expected)")
        problem = wheel_filename_problem(pkg.filename, pkg.name, pkg.version) \
            or (url_problem(pkg.url) if pkg.url is not None else None)
        if problem:
            raise LockfileError(f"{source}: {where}: {problem}", hint=HOSTILE_HINT)


def _check_base(lock: Lockfile, source: str, text) -> None:
    from envkit.lock.model import BASE_KINDS

    base = lock.base
    text(base.kind, "base.kind", re.compile("|".join(BASE_KINDS)), f"is not one of {', '.join(BASE_KINDS)}")
    text(base.python, "base.python", FULL_PYTHON, "is not a Python version")
    text(base.source, "base.source")
    text(base.image_id, "base.image_id", DIGEST, "is not sha256:<64 hex>")
    text(base.ref, "base.ref", IMAGE_REF, "is not an image reference")
    if base.kind == "registry":
        if base.digest is None:
            raise LockfileError(f"{source}: a registry base needs its manifest digest", hint=HOSTILE_HINT)
        text(base.digest, "base.digest", DIGEST, "is not sha256:<64 hex>")
        if "@" in base.ref and base.ref.split("@", 1)[1] != base.digest:
            raise LockfileError(f"{source}: base.ref {shown(base.ref)} names another digest than base.digest",
                                hint=HOSTILE_HINT)
    if base.kind == "image":
        if base.digest is None:
            raise LockfileError(f"{source}: a local base image needs its image ID (base.digest)", hint=HOSTILE_HINT)
        text(base.digest, "base.digest", DIGEST, "is not sha256:<64 hex>")
    if (base.kind == "debian") != (base.debian is not None):
        raise LockfileError(f"{source}: base.debian is given {'only ' if base.debian else 'not '}for a "
                            f"{base.kind} base" + ("" if base.debian else ", yet a debian base needs it"),
                            hint=HOSTILE_HINT)
    if base.kind == "debian" and base.digest is not None:
        raise LockfileError(f"{source}: a debian base is pinned by its .debs, not by base.digest", hint=HOSTILE_HINT)
    if base.debian is None:
        return
    deb = base.debian
    text(deb.suite, "base.debian.suite", SUITE, "is not a Debian suite name")
    text(deb.mmdebstrap, "base.debian.mmdebstrap", TOOL_VERSION, "is not a version")
    for i, name in enumerate(deb.packages):
        text(name, f"base.debian.packages[{i}]", DEB_NAME, "is not a Debian package name")
    seen: set[tuple[str, str]] = set()
    for pin in deb.debs:
        where = f"base.debian .deb {pin.name if DEB_NAME.fullmatch(pin.name) else shown(pin.name)}"
        text(pin.name, f"{where}: name", DEB_NAME, "is not a Debian package name")
        text(pin.version, f"{where}: version", DEB_VERSION, "is not a Debian version")
        text(pin.arch, f"{where}: arch", DEB_ARCH, "is not a Debian architecture")
        text(pin.filename, f"{where}: filename", POOL_PATH, "is not a pool path (pool/.../name.deb)")
        text(pin.sha256, f"{where}: sha256", SHA256, "is malformed (64 lowercase hex digits expected)")
        if not 0 < pin.size < 2**34:
            raise LockfileError(f"{source}: {where}: size {pin.size} is out of range", hint=HOSTILE_HINT)
        if (pin.name, pin.arch) in seen:
            raise LockfileError(f"{source}: {where} is pinned twice", hint=HOSTILE_HINT)
        seen.add((pin.name, pin.arch))
