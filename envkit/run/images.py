"""Which image a run uses: from a lockfile (built, or found by its build key) or an explicit reference."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from envkit.engine import Engine
from envkit.errors import ImageNotFoundError
from envkit.settings import LABEL_CPU_PROFILE, LABEL_LOCK_NAME, LABEL_LOCK_SHA
from envkit.store.record import LockInfo


@dataclass
class ResolvedImage:
    id: str
    ref: str | None
    digests: list[str]  # repo@sha256:... for every registry it was pushed to or pulled from
    lock: LockInfo | None
    build_s: float | None
    cpu_profile: str | None  # the profile baked into the image, if envkit built it
    lock_text: str | None = None
    cuda: str | None = None  # the CUDA its lock's wheels need (read from the lock already loaded; None for CPU)


def resolve_image(engine: Engine, project: Path, lock_path: Path | None, image: str | None,
                  cpu_profile: str, progress=None) -> ResolvedImage:
    """The image for a run: ``image``, else the lock's, else the project's environment
    (:func:`envkit.run.environment.find_environment`: its configuration, its one lock, or envkit.yaml locked now).

    Raises:
        ProjectEnvironmentError: no lock or image given, and the project has none, or more than one.
        ImageNotFoundError: the image named is not on this engine.
    """
    if lock_path is None and image is None:
        from envkit.run.environment import ensure_lock, find_environment

        env = find_environment(project)
        if env.image is not None:
            image = env.image
        else:
            lock_path = ensure_lock(engine, env)
    if lock_path is not None:
        return _from_lock(engine, lock_path, cpu_profile, progress)
    assert image is not None
    img = engine.find_image(image)
    if img is None:
        raise ImageNotFoundError(f"image {image} is not on this Docker engine",
                                 hint="build it with `envkit build LOCKFILE`, or pull it first")
    labels = img.labels or {}
    lock = LockInfo(sha256=labels[LABEL_LOCK_SHA], name=labels.get(LABEL_LOCK_NAME)) if LABEL_LOCK_SHA in labels \
        else None
    return ResolvedImage(img.id, image, list(img.repo_digests), lock, None, labels.get(LABEL_CPU_PROFILE))


def _from_lock(engine: Engine, lock_path: Path, cpu_profile: str, progress=None) -> ResolvedImage:
    """The lock's image: found through the lock's remembered resolution (same bytes, same envkit: no YAML parsed,
    nothing planned), else read, checked and built or found by :func:`envkit.image.builder.build_image`."""
    from envkit.image import buildcache

    t0 = time.monotonic()
    data = _bytes_of(lock_path)  # None: load_lockfile says what is wrong with the path
    key = buildcache.resolved_key(data, cpu_profile) if data is not None else None
    known = buildcache.read_resolved(key) if key else None
    image = buildcache.cached_image(engine, known.build_key) if known else None
    if known is None or image is None:
        from envkit.image.builder import build_image
        from envkit.lock.cuda import lock_cuda
        from envkit.lock.model import load_lockfile

        lock = load_lockfile(lock_path)
        # On a cache miss the build takes minutes: each step (base, venv, layer, load) shows as a stage of its own.
        on_step = (lambda step: progress(f"building the image: {step}", 0)) if progress else None
        result = build_image(engine, lock, cpu_profile=cpu_profile, progress=progress, on_step=on_step)
        known = buildcache.ResolvedLock(lock.name, lock.content_sha256, result.build_key, result.tag, lock_cuda(lock))
        if key and _bytes_of(lock_path) == data:  # what was checked is what was hashed
            buildcache.remember_resolved(key, known)
        image = engine.image(result.image_id)
    elif known.tag not in image.tags:
        engine.tag(image.id, known.tag)
    return ResolvedImage(image.id, known.tag, list(image.repo_digests),
                         LockInfo(path=str(lock_path), sha256=known.content_sha256, name=known.name),
                         round(time.monotonic() - t0, 3), cpu_profile, _text(data or b""),
                         known.cuda)


def _text(data: bytes) -> str:
    """The lock's text as ``Path.read_text`` gives it (universal newlines); it was checked as UTF-8."""
    return data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")


def _bytes_of(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
