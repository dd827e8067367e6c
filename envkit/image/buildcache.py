"""envkit's own records of what it built, in its cache folder: the build map and the resolved locks.

- The build map, ``<cache>/builds/<build key>.json``: the image ID envkit built for a build key (the lock, the CPU
  profile, envkit's recipe), with the parts a later build reuses. It is envkit's own, never an image label: anyone
  can label an image with a public lock's key and load it (a bundle, a pull); such an image is never taken for a
  build.
- Resolved locks, ``<cache>/locks/<key>.json``: what reading, checking and planning a lock gave (its name, content
  hash, build key, tag, CUDA), keyed by the lock file's bytes, the CPU profile and the identity of the code that did
  it (:func:`code_identity`). ``envkit run --lock`` then finds the image without parsing the YAML or importing the
  lock checker and the planner again (about 80 ms of a run's start). A lock is remembered only once it passed every
  check, and any change to its bytes or to envkit's code (an upgrade, an edited file in a checkout) misses.

Both are best effort: an entry that is missing, unreadable or of the wrong shape is a miss, never an error. This
module is light on purpose (no YAML, no lock model): a run's start imports it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from envkit import __version__
from envkit.atomic import atomic_write
from envkit.engine import Engine, Image
from envkit.resources import docker_file
from envkit.settings import build_cache_dir, resolved_locks_dir

_HEX64 = re.compile(r"[0-9a-f]{64}")
# The libraries whose versions decide how a lock reads and checks: PyYAML parses it, packaging checks its wheels.
_LIBRARIES = ("yaml", "packaging")


# --- the build map ---------------------------------------------------------------------------------------------------
def _entry_path(build_key: str) -> Path:
    if not _HEX64.fullmatch(build_key):
        raise ValueError(f"malformed build key {build_key!r}")
    return build_cache_dir() / f"{build_key}.json"


def read_entry(build_key: str) -> dict:
    """The build map's entry for ``build_key`` (``{}`` when there is none or it is damaged)."""
    try:
        data = json.loads(_entry_path(build_key).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("image_id"), str) else {}


def cached_image(engine: Engine, build_key: str) -> Image | None:
    """The image envkit built for this key, if this engine still has it."""
    image_id = read_entry(build_key).get("image_id")
    return engine.find_image(image_id) if image_id is not None else None


def remember_build(build_key: str, image_id: str, **parts: object) -> None:
    """Record that envkit built ``image_id`` for ``build_key``, with its parts (best effort: a miss costs a build)."""
    try:
        build_cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(_entry_path(build_key), json.dumps({"image_id": image_id, "built": time.time(), **parts}),
                     durable=False)
    except OSError:
        pass


def recent_entries(limit: int = 200) -> list[dict]:
    """The build map's entries, newest first (at most ``limit``)."""
    try:
        paths = sorted(build_cache_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        return []
    entries = (read_entry(p.stem) for p in paths[:limit] if _HEX64.fullmatch(p.stem))
    return [e for e in entries if e]


# --- resolved locks --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedLock:
    """What a lock file resolves to under this envkit, for one CPU profile."""

    name: str
    content_sha256: str
    build_key: str
    tag: str
    cuda: str | None

    def valid(self) -> bool:
        return (isinstance(self.name, str) and bool(self.name) and isinstance(self.tag, str)
                and self.tag == f"envkit/{self.name}:{self.build_key[:12]}"
                and all(isinstance(v, str) and _HEX64.fullmatch(v) for v in (self.content_sha256, self.build_key))
                and (self.cuda is None or isinstance(self.cuda, str)))


@functools.cache
def code_identity() -> str:
    """Names this envkit's code and the libraries that read locks, as they are on disk now: the version, every file
    of the package (and of docker/ in a checkout) by path, size and modification time, PyYAML's and packaging's
    files, and the Python. Walking the package costs about 1 ms."""
    h = hashlib.sha256(f"{__version__}\0{sys.version}\0".encode())
    package = Path(__file__).resolve().parents[1]
    roots = [package]
    try:  # docker/ of a checkout (an installed wheel has it inside the package, as envkit/_docker)
        data = docker_file("envkit-bootstrap.pth").parent
        if package not in data.parents:
            roots.append(data)
    except FileNotFoundError:
        pass
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            roots.append(Path(spec.origin).parent)
    for root in roots:
        _stat_tree(root, h)
    return h.hexdigest()


def _stat_tree(root: Path, h: hashlib._Hash) -> None:
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            h.update(f"{entry.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def resolved_key(lock_bytes: bytes, cpu_profile: str) -> str:
    """The key of a lock file's resolution: its bytes, the CPU profile, this code."""
    return hashlib.sha256(b"%s\0%s\0%s" % (hashlib.sha256(lock_bytes).hexdigest().encode(), cpu_profile.encode(),
                                           code_identity().encode())).hexdigest()


def read_resolved(key: str) -> ResolvedLock | None:
    """The remembered resolution, or None (none, damaged, or of the wrong shape)."""
    try:
        data = json.loads((resolved_locks_dir() / f"{key}.json").read_text())
        found = ResolvedLock(**data)
    except (OSError, ValueError, TypeError):
        return None
    return found if found.valid() else None


def remember_resolved(key: str, resolved: ResolvedLock) -> None:
    """Remember a lock's resolution (best effort)."""
    if not (_HEX64.fullmatch(key) and resolved.valid()):
        return
    try:
        resolved_locks_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(resolved_locks_dir() / f"{key}.json", json.dumps(asdict(resolved)), durable=False)
    except OSError:
        pass
