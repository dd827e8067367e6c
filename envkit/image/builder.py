"""Lockfile -> image on a real Docker engine (classic builder, no network during the build).

The order matters for speed and safety: the build key is computed first and an image carrying it is a cache hit
(no downloads, no build); otherwise the wheels are fetched into the verified cache, a build context is assembled
from them, the build streams its steps, and a failure shows the failing step's log.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.atomic import atomic_write
from envkit.engine import Engine
from envkit.errors import BuildError, ImageNotFoundError, PlatformError
from envkit.image.preflight import check_space, compiler_warning
from envkit.image.render import BuildPlan, plan_build
from envkit.image.wheels import Progress, ensure_wheels, link_or_copy
from envkit.lock.localsources import LocalSources
from envkit.lock.model import Lockfile
from envkit.settings import build_cache_dir, wheel_cache_dir

_STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}


@dataclass
class BuildResult:
    image_id: str
    tag: str
    build_key: str
    cache_hit: bool
    seconds: float
    repo_digest: str | None = None
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each, for the user (a triton lock without a compiler)


def check_platform(engine: Engine, lock: Lockfile) -> None:
    """Refuse a lock whose target this engine cannot run."""
    raw = str(engine.facts().get("arch"))
    arch = _ARCH_ALIASES.get(raw, raw)
    if arch != lock.platform.arch:
        raise PlatformError(
            f"lock {lock.name} targets {lock.platform.os}/{lock.platform.arch}, this Docker engine runs {arch}",
            hint="build it on a host of the target architecture",
        )


def _cache_entry(build_key: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{64}", build_key):
        raise ValueError(f"malformed build key {build_key!r}")
    return build_cache_dir() / f"{build_key}.json"


def find_cached(engine: Engine, build_key: str) -> str | None:
    """The image envkit built for this key, if this engine still has it.

    The key -> image ID map is envkit's own (in its cache folder), never an image label: anyone can label an image
    with a public lock's key and load it (a bundle, a pull); such an image is never taken for envkit's build.
    """
    try:
        image_id = json.loads(_cache_entry(build_key).read_text())["image_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(image_id, str) or engine.find_image(image_id) is None:
        return None
    return image_id


def remember_build(build_key: str, image_id: str) -> None:
    """Record that envkit built ``image_id`` for ``build_key`` (best effort: a miss only costs a build)."""
    try:
        build_cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write(_cache_entry(build_key), json.dumps({"image_id": image_id, "built": time.time()}), durable=False)
    except OSError:
        pass


def build_image(
    engine: Engine,
    lock: Lockfile,
    cpu_profile: str = "native",
    no_cache: bool = False,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build (or find) the image for a lock.

    Args:
        engine: where the image is built.
        lock: a loaded, hash-checked lockfile.
        cpu_profile: ``native`` or ``portable`` (baked into ENV and the build key).
        no_cache: build even if an image with the same build key exists.
        progress: byte-progress factory for wheel fetching and verification.
        on_step: called with each Dockerfile step as the build reaches it.

    Raises:
        PlatformError, ImageNotFoundError (base), HashMismatchError, FetchError, BuildError.
    """
    t0 = time.monotonic()
    check_platform(engine, lock)
    plan = plan_build(lock, cpu_profile)
    if not no_cache:
        cached = find_cached(engine, plan.build_key)
        if cached:
            engine.tag(cached, plan.tag)
            return BuildResult(cached, plan.tag, plan.build_key, True, time.monotonic() - t0)
    _require_base(engine, lock)
    warning = compiler_warning(engine, lock)
    wheels = ensure_wheels(lock.packages, wheel_cache_dir(), progress, sources=LocalSources.for_lock(lock))
    check_space(engine, wheels)
    with tempfile.TemporaryDirectory(prefix="envkit-build-") as tmp:
        ctx = Path(tmp)
        _write_context(ctx, plan, wheels)
        image_id, steps = _build(engine, ctx, plan, no_cache, on_step)
    remember_build(plan.build_key, image_id)
    return BuildResult(image_id, plan.tag, plan.build_key, False, time.monotonic() - t0, steps=steps,
                       warnings=[warning] if warning else [])


def _require_base(engine: Engine, lock: Lockfile) -> None:
    if engine.find_image(lock.base.digest) is None:
        raise ImageNotFoundError(
            f"base image {lock.base.ref} ({lock.base.digest[:19]}) pinned by lock {lock.name} is not on this engine",
            hint=(f"make it with `{lock.base.source}`, then re-pin with `envkit lock SPEC` (a new base has a new "
                  "digest)") if lock.base.source else f"pull {lock.base.repo_digest or lock.base.ref} first",
        )


def _write_context(ctx: Path, plan: BuildPlan, wheels: list[Path]) -> None:
    (ctx / "Dockerfile").write_text(plan.dockerfile, encoding="utf-8")
    (ctx / "requirements.lock.txt").write_text(plan.requirements, encoding="utf-8")
    (ctx / "wheels").mkdir()
    for path in wheels:
        link_or_copy(path, ctx / "wheels" / path.name)
    (ctx / "site").mkdir()
    for name, data in plan.site_files.items():
        (ctx / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / "site" / name).write_bytes(data)


def _build(engine: Engine, ctx: Path, plan: BuildPlan, no_cache: bool,
           on_step: Callable[[str], None] | None) -> tuple[str, list[str]]:
    """Run the engine's build, following its steps; a failure names the failing step and shows its log."""
    steps: list[str] = []
    step_log: list[str] = []
    layers: dict[str, str | None] = {"last": None, "install_stage": None}

    def on_event(item: dict[str, Any]) -> None:
        text = _ANSI_RE.sub("", str(item.get("stream", "")))
        for line in text.splitlines():
            m = _STEP_RE.match(line.strip())
            # The first stage's image is only a build cache (1.5 GB for torch): remembered to be removed.
            if m and m.group(3).startswith("FROM ") and layers["last"] is not None:
                layers["install_stage"] = layers["last"]
            if line.strip().startswith("---> ") and " " not in line.strip()[5:]:
                layers["last"] = line.strip()[5:]
            if m:
                steps.append(line.strip())
                step_log.clear()
                if on_step:
                    on_step(line.strip())
            elif line.strip():
                step_log.append(line.rstrip())

    try:
        image_id = engine.build(ctx, plan.tag, on_event=on_event, no_cache=no_cache)
    except BuildError as exc:
        failing = steps[-1] if steps else "the first step"
        failing = failing if len(failing) <= 90 else failing[:87] + "..."
        log = "\n".join(step_log[-40:])
        m = re.search(r"returned a non-zero code: \d+", exc.message)
        reason = m.group(0) if m else exc.message[-300:]
        raise BuildError(
            f"the image build failed at {failing}: {reason}" + (f"\n--- log of that step ---\n{log}" if log else ""),
            hint="the step's log is above; fix the lock or base image and build again",
        ) from exc
    if layers["install_stage"] is not None:
        engine.remove_image(layers["install_stage"])
    return image_id, steps


def push_repository(target: str) -> str:
    """``REGISTRY/REPO`` from what a user gives ``--push`` (a tag or digest after it is dropped: envkit tags)."""
    repo = target.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rpartition(":")[0]
    return repo


def build_and_push(engine: Engine, lock: Lockfile, cpu_profile: str = "native", no_cache: bool = False,
                   push: str | None = None, progress: Progress | None = None,
                   on_step: Callable[[str], None] | None = None) -> BuildResult:
    """:func:`build_image`, then (given ``push``) push it and fill ``repo_digest``.

    Raises:
        what build_image raises; RegistryError: the push failed.
    """
    result = build_image(engine, lock, cpu_profile=cpu_profile, no_cache=no_cache, progress=progress, on_step=on_step)
    if push:
        result.repo_digest = engine.push(result.image_id, push_repository(push), result.build_key[:12])
    return result
