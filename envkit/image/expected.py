"""The image IDs a lock expects: comparing a build with them, and recording them (``envkit build --pin``).

A lock's ``images`` maps each CPU profile to the image ID a build of it gives on any host; ``image_parts`` says
what those IDs were built from (envkit's recipe, the base's layers, the venv layer), so that a build that gives
another ID can say which part differs. Neither is part of the lock's content hash (see :mod:`envkit.lock.model`),
so recording them changes nothing else in the lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from envkit.errors import LockfileError
from envkit.lock.model import ImageParts, Lockfile, load_lockfile, write_lockfile

MATCHES, DIFFERS, UNPINNED = "matches", "differs", "unpinned"


@dataclass(frozen=True)
class Comparison:
    """A build's image ID against the lock's: ``status`` is matches, differs or unpinned."""

    status: str
    expected: str | None
    reasons: list[str] = field(default_factory=list)

    def line(self, image_id: str, lock: Lockfile, profile: str) -> str:
        """One line for the user."""
        if self.status == MATCHES:
            return f"{image_id} matches the lock ({lock.name}, CPU profile {profile})"
        if self.status == UNPINNED:
            return (f"the lock {lock.name} records no expected image ID for CPU profile {profile}; record it with "
                    f"`envkit build LOCK --pin`")
        return (f"{image_id} differs from the lock's {self.expected} (CPU profile {profile}): "
                + "; ".join(self.reasons))


def compare(lock: Lockfile, profile: str, image_id: str, recipe: str, base_layers: Sequence[str], venv_layer: str,
            mmdebstrap: str | None = None) -> Comparison:
    """``image_id``, built from these parts, against what ``lock`` expects for ``profile``."""
    expected = lock.images.get(profile)
    if expected is None:
        return Comparison(UNPINNED, None)
    if expected == image_id:
        return Comparison(MATCHES, expected)
    parts = lock.image_parts
    if parts is None:
        return Comparison(DIFFERS, expected, ["the lock does not say what its ID was built from (no image_parts)"])
    reasons = []
    if parts.recipe != recipe:
        reasons.append("envkit's recipe differs from the one the lock's IDs were pinned with (its version, in-image "
                       "files or assembly changed): refresh the IDs with `envkit build LOCK --pin`")
    if list(parts.base_layers) != list(base_layers):
        why = "the base layer differs"
        deb = lock.base.debian
        if deb is not None and mmdebstrap and mmdebstrap != deb.mmdebstrap:
            why += f" (made here with mmdebstrap {mmdebstrap}, the lock was resolved with {deb.mmdebstrap})"
        reasons.append(f"{why}: {_short(parts.base_layers)} expected, {_short(base_layers)} built")
    if parts.venv_layer != venv_layer:
        reasons.append(f"the venv layer differs: {parts.venv_layer[:19]} expected, {venv_layer[:19]} built")
    if not reasons:
        reasons.append("the base and venv layers are the expected ones: the config differs (ENV, labels or history)")
    return Comparison(DIFFERS, expected, reasons)


def _short(diff_ids: Sequence[str]) -> str:
    return ", ".join(d[:19] for d in diff_ids) or "none"


def pin(path: Path, lock: Lockfile, images: dict[str, str], parts: ImageParts) -> Lockfile:
    """Record ``images`` (CPU profile -> image ID) and ``parts`` in the lockfile at ``path``, atomically.

    Raises:
        LockfileError: the file changed since ``lock`` was read from it (locked again meanwhile).
    """
    current = load_lockfile(path)
    if current.content_sha256 != lock.content_sha256:
        raise LockfileError(f"{path} changed while its images were built (content {current.content_sha256[:12]}, "
                            f"built {lock.content_sha256[:12]})", hint="run `envkit build LOCK --pin` again")
    pinned = current.with_images(images, parts)
    write_lockfile(pinned, path)
    return pinned
