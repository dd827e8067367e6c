"""Lockfile -> image, assembled by envkit (no ``docker build``): one lock gives one image ID on every host.

1. The build key (the lock, the CPU profile, envkit's recipe) names an image this engine has: done, a cache hit.
   The map of keys to image IDs is envkit's own (``<cache>/builds/``), never an image label. An image of the same
   venv (the other CPU profile) on the engine: only a new config is written and loaded.
2. The base (:mod:`envkit.image.bases`): a Debian base made from its pinned .debs, a registry base pulled by digest.
3. The wheels, by hash, from whichever source has them (:mod:`envkit.image.wheels`).
4. The venv: a container of the base, with no network, installs the wheels into a fresh host folder mounted at
   /opt/envkit/venv and writes hash-based bytecode in fixed shards (:mod:`envkit.image.assemble`).
5. The image: the venv as one normalised layer and a config envkit writes over the base's, dated at the lock's
   epoch, streamed into ``docker load`` (the base's layers are named, not sent: the engine has them).
6. The result against the lock's expected ID (:mod:`envkit.image.expected`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.engine import ContainerSpec, Engine, Mount
from envkit.errors import BuildError, EnvkitError, PlatformError
from envkit.image.buildcache import (
    cached_image,
    read_entry,
    recent_entries,
    remember_build,
)
from envkit.image.expected import Comparison, compare
from envkit.image.render import BuildPlan, plan_build
from envkit.lock.model import Lockfile
from envkit.settings import IMAGE_VENV, wheel_cache_dir

if TYPE_CHECKING:  # imported where an image is made: a cache hit (a no-op build) loads none of them
    from envkit.image import oci
    from envkit.image.bases import ReadyBase
    from envkit.image.wheels import Progress

_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
VENV_TIMEOUT = 3600


@dataclass
class BuildResult:
    image_id: str
    tag: str
    build_key: str
    cache_hit: bool
    seconds: float
    repo_digest: str | None = None
    steps: list[str] = field(default_factory=list)
    comparison: Comparison | None = None
    base_layers: list[str] = field(default_factory=list)
    venv_layer: str | None = None
    recipe: str = ""
    previous: str | None = None  # --check: the image this host built for the key before, if any
    base_how: str | None = None
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


def _same_venv(engine: Engine, venv_key: str) -> dict | None:
    """A build of the same venv (base, wheels, recipe) whose image this engine has: its layers are reusable."""
    for data in recent_entries():
        if data.get("venv_key") == venv_key and isinstance(data.get("venv_layer"), str) \
                and engine.find_image(data["image_id"]) is not None:
            return data
    return None


# --- the build ------------------------------------------------------------------------------------------------------
def build_image(
    engine: Engine,
    lock: Lockfile,
    cpu_profile: str = "native",
    no_cache: bool = False,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
    check: bool = False,
) -> BuildResult:
    """Build (or find) the image for a lock, and compare it with the lock's expected image ID.

    Args:
        engine: where the image is built.
        lock: a loaded, hash-checked lockfile.
        cpu_profile: ``native`` or ``portable`` (baked into ENV and the build key).
        no_cache: install the venv again even if an image of the same build key or venv exists (the base and the
            wheels come from envkit's cache).
        progress: byte-progress factory for wheel fetching and verification.
        on_step: called with a line as each stage starts.
        check: rebuild from nothing (a Debian base made again from its .debs, the venv installed again) and record
            the image this host built before for the key in ``previous`` (``envkit build --check``).

    Raises:
        PlatformError, LockfileError; BaseImageError, FetchError, HashMismatchError, RegistryError, ImageNotFoundError
        (the base); FetchError, HashMismatchError (a wheel); BuildError (the venv install or the load).
    """
    t0 = time.monotonic()
    say = on_step or (lambda _s: None)
    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        say(line)

    plan = plan_build(lock, cpu_profile)
    previous = read_entry(plan.build_key)
    if not (no_cache or check):
        cached = cached_image(engine, plan.build_key)
        if cached is not None:
            if plan.tag not in cached.tags:
                engine.tag(cached.id, plan.tag)
            cached = cached.id
            result = BuildResult(cached, plan.tag, plan.build_key, True, time.monotonic() - t0, recipe=plan.recipe,
                                 base_layers=list(previous.get("base_layers") or []),
                                 venv_layer=previous.get("venv_layer"))
            result.comparison = compare(lock, cpu_profile, cached, plan.recipe, result.base_layers,
                                        result.venv_layer or "")
            return result
    check_platform(engine, lock)  # a cache hit was built here, for this platform
    from envkit.image import assemble, oci
    from envkit.image.bases import ensure_base, scratch
    from envkit.image.preflight import check_space, compiler_warning
    from envkit.image.wheels import WheelSources, ensure_wheels

    # Under envkit's cache: the wheels hard-link into it, and the engine bind-mounts it (the same host).
    with tempfile.TemporaryDirectory(prefix="build-", dir=scratch()) as tmp:
        work = Path(tmp)
        base = ensure_base(engine, lock, work, fresh=check, step=step)
        step(f"base: {base.image_id[:19]} ({base.how})")
        warning = compiler_warning(engine, lock, base.image_id)
        venv_key = hashlib.sha256(f"{base.image_id}\0{plan.recipe}\0{plan.requirements}".encode()).hexdigest()
        reuse = None if (no_cache or check) else _same_venv(engine, venv_key)
        if reuse is not None:
            step(f"venv: the layer {reuse['venv_layer'][:19]} of {reuse['image_id'][:19]} (same venv, other profile)")
            venv_layer = oci.present_layer(reuse["venv_layer"])
        else:
            wheels = ensure_wheels(lock.packages, wheel_cache_dir(), progress, sources=WheelSources.for_lock(lock))
            check_space(engine, wheels)
            venv_dir = _install_venv(engine, base, lock, plan, wheels, work, step)
            step("venv: writing the layer (sorted, owner 0:0, mtimes clamped to the epoch)")
            venv_layer = oci.write_layer(venv_dir, work / "venv.tar", plan.epoch, prefix=IMAGE_VENV.strip("/"))
            shutil.rmtree(venv_dir, ignore_errors=True)
        layers = [*base.archive.layers, venv_layer]
        config = assemble.config_on_base(
            base.archive.config, diff_ids=[b.diff_id for b in layers], epoch=plan.epoch, env=plan.env,
            labels=plan.labels, created_by=f"envkit: venv at {IMAGE_VENV} (pinned wheels, hash-based bytecode)")
        image_id = _load(engine, config, layers, plan, base, reuse is not None, step)
    parts = {"venv_key": venv_key, "base_layers": base.diff_ids, "venv_layer": venv_layer.diff_id,
             "recipe": plan.recipe}
    if not check or not previous:
        remember_build(plan.build_key, image_id, **parts)
    result = BuildResult(image_id, plan.tag, plan.build_key, False, time.monotonic() - t0, steps=steps,
                         base_layers=base.diff_ids, venv_layer=venv_layer.diff_id, recipe=plan.recipe,
                         previous=previous.get("image_id") if check else None, base_how=base.how,
                         warnings=[warning] if warning else [])
    result.comparison = compare(lock, cpu_profile, image_id, plan.recipe, base.diff_ids, venv_layer.diff_id,
                                base.mmdebstrap)
    return result


def _install_venv(engine: Engine, base: ReadyBase, lock: Lockfile, plan: BuildPlan, wheels: list[Path], work: Path,
                  step: Callable[[str], None]) -> Path:
    """Install the pinned wheels into a fresh host folder from a container of the base (no network); the folder."""
    from envkit.image import assemble
    from envkit.image.wheels import link_or_copy

    (work / "wheels").mkdir()
    for path in wheels:
        link_or_copy(path, work / "wheels" / path.name)
    (work / "requirements.lock.txt").write_text(plan.requirements, encoding="utf-8")
    for name, data in plan.site_files.items():
        (work / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (work / "site" / name).write_bytes(data)
    venv = work / "venv"
    venv.mkdir()
    # As the invoking user when envkit is not root, so that it can remove the folder; the owners do not reach the
    # layer (written as 0:0).
    user = None if os.geteuid() == 0 else f"{os.geteuid()}:{os.getegid()}"
    spec = ContainerSpec(image=base.image_id, command=plan.venv_command, network="none", user=user, mounts=[
        Mount(work / "wheels", assemble.WHEELS_MOUNT), Mount(work / "requirements.lock.txt", assemble.REQUIREMENTS_MOUNT),
        Mount(work / "site", assemble.SITE_MOUNT), Mount(venv, IMAGE_VENV, read_only=False)])
    step(f"venv: installing {len(lock.packages)} wheels and compiling bytecode in a container of the base "
         "(no network)")
    container = engine.create(spec)
    log: list[str] = []
    try:
        for out, err in container.start():
            for chunk in (out, err):
                if chunk:
                    log.extend(chunk.decode(errors="replace").splitlines())
                    del log[:-60]
        status = container.wait()
    finally:
        container.remove()
    if status.exit_code != 0:
        tail = "\n".join(log[-40:])
        reason = next((ln for ln in reversed(log) if ln.strip().startswith(("ERROR:", "error:"))),
                      log[-1] if log else "no output")
        raise BuildError(f"installing the venv failed (exit {status.exit_code}): {reason.strip()[:300]}"
                         + (f"\n--- log of the install ---\n{tail}" if tail else ""),
                         hint="the install's log is above; fix the lock or the base and build again")
    for line in log:
        if line.startswith("compiled "):
            step(f"venv: {line.strip()}")
    return venv


def _load(engine: Engine, config: bytes, layers: list[oci.LayerBlob], plan: BuildPlan, base: ReadyBase,
          venv_present: bool, step: Callable[[str], None]) -> str:
    """Stream the image into ``docker load``: the config, and the venv layer unless the engine has it."""
    from envkit.image import oci

    omit = len(layers) if venv_present else len(base.archive.layers)
    image_id = oci.image_id(config)
    sent = sum(b.size for b in layers[omit:])
    step(f"image: loading {image_id[:19]} ({sent / 1e6:.0f} MB sent; the base's layers are the engine's)")
    try:
        loaded = engine.load(oci.archive_chunks(config, layers, epoch=plan.epoch, omit=omit, tags=[plan.tag]))
    except EnvkitError as exc:
        raise BuildError(f"docker load of the assembled image failed: {exc.message}",
                         hint="build again (the base or a layer may have been removed meanwhile)") from exc
    if image_id not in loaded:
        raise BuildError(f"docker load gave {', '.join(loaded) or 'no image'}, envkit wrote {image_id}",
                         hint="report this: the engine changed the image config")
    return image_id


def push_repository(target: str) -> str:
    """``REGISTRY/REPO`` from what a user gives ``--push`` (a tag or digest after it is dropped: envkit tags)."""
    repo = target.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rpartition(":")[0]
    return repo


def build_and_push(engine: Engine, lock: Lockfile, cpu_profile: str = "native", no_cache: bool = False,
                   push: str | None = None, progress: Progress | None = None,
                   on_step: Callable[[str], None] | None = None, check: bool = False) -> BuildResult:
    """:func:`build_image`, then (given ``push``) push it and fill ``repo_digest``.

    Raises:
        what build_image raises; RegistryError: the push failed.
    """
    result = build_image(engine, lock, cpu_profile=cpu_profile, no_cache=no_cache, progress=progress,
                         on_step=on_step, check=check)
    if push:
        result.repo_digest = engine.push(result.image_id, push_repository(push), result.build_key[:12])
    return result
