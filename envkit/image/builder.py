"""Lockfile -> image on a real Docker engine (classic builder, no network during the build).

The order matters for speed and safety: the build key is computed first and an image carrying it is a cache hit
(no downloads, no build); otherwise the wheels are fetched into the verified cache, a build context is assembled
from them, the build streams its steps, and a failure shows the failing step's log.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.engine import engine_info, translated
from envkit.errors import BuildError, ImageNotFoundError, PlatformError, RegistryError
from envkit.image.render import LABEL_BUILD_KEY, BuildPlan, plan_build
from envkit.image.wheels import Progress, ensure_wheels, link_or_copy
from envkit.lock.model import Lockfile
from envkit.settings import wheel_cache_dir

if TYPE_CHECKING:
    import docker

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


def check_platform(client: docker.DockerClient, lock: Lockfile) -> None:
    """Refuse a lock whose target this engine cannot run."""
    raw = str(engine_info(client).get("arch"))
    arch = _ARCH_ALIASES.get(raw, raw)
    if arch != lock.platform.arch:
        raise PlatformError(
            f"lock {lock.name} targets {lock.platform.os}/{lock.platform.arch}, this Docker engine runs {arch}",
            hint="build it on a host of the target architecture",
        )


def find_cached(client: docker.DockerClient, build_key: str) -> str | None:
    with translated("looking up cached images"):
        images = client.images.list(filters={"label": f"{LABEL_BUILD_KEY}={build_key}"})
    return images[0].id if images else None


def build_image(
    client: docker.DockerClient,
    lock: Lockfile,
    cpu_profile: str = "native",
    no_cache: bool = False,
    progress: Progress | None = None,
    on_step: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build (or find) the image for a lock.

    Args:
        client: a connected engine.
        lock: a loaded, hash-checked lockfile.
        cpu_profile: ``native`` or ``portable`` (baked into ENV and the build key).
        no_cache: build even if an image with the same build key exists.
        progress: byte-progress factory for wheel fetching and verification.
        on_step: called with each Dockerfile step as the build reaches it.

    Raises:
        PlatformError, ImageNotFoundError (base), HashMismatchError, FetchError, BuildError.
    """
    t0 = time.monotonic()
    check_platform(client, lock)
    plan = plan_build(lock, cpu_profile)
    if not no_cache:
        cached = find_cached(client, plan.build_key)
        if cached:
            _tag(client, cached, plan.tag)
            return BuildResult(cached, plan.tag, plan.build_key, True, time.monotonic() - t0)
    _require_base(client, lock)
    wheels = ensure_wheels(lock.packages, wheel_cache_dir(), progress)
    with tempfile.TemporaryDirectory(prefix="envkit-build-") as tmp:
        ctx = Path(tmp)
        _write_context(ctx, plan, wheels)
        image_id, steps = _docker_build(client, ctx, plan, no_cache, on_step)
    return BuildResult(image_id, plan.tag, plan.build_key, False, time.monotonic() - t0, steps=steps)


def _require_base(client: docker.DockerClient, lock: Lockfile) -> None:
    import docker.errors

    try:
        with translated("inspecting the base image", image=lock.base.digest):
            client.images.get(lock.base.digest)
    except (ImageNotFoundError, docker.errors.ImageNotFound) as exc:
        raise ImageNotFoundError(
            f"base image {lock.base.ref} ({lock.base.digest[:19]}) pinned by lock {lock.name} is not on this engine",
            hint=(f"make it with `{lock.base.source}`, then re-pin with `envkit lock SPEC` (a new base has a new "
                  "digest)") if lock.base.source else f"pull {lock.base.repo_digest or lock.base.ref} first",
        ) from exc


def _write_context(ctx: Path, plan: BuildPlan, wheels: list[Path]) -> None:
    (ctx / "Dockerfile").write_text(plan.dockerfile, encoding="utf-8")
    (ctx / "requirements.lock.txt").write_text(plan.requirements, encoding="utf-8")
    (ctx / "wheels").mkdir()
    for path in wheels:
        link_or_copy(path, ctx / "wheels" / path.name)
    (ctx / "site").mkdir()
    for name, data in plan.site_files.items():
        (ctx / "site" / name).write_bytes(data)


def _docker_build(client: docker.DockerClient, ctx: Path, plan: BuildPlan, no_cache: bool,
                  on_step: Callable[[str], None] | None) -> tuple[str, list[str]]:
    steps: list[str] = []
    step_log: list[str] = []
    image_id = None
    last_layer = None
    install_stage = None  # the first stage's image: only a build cache, 1.5 GB for torch; removed after the build
    with translated("building the image"):
        stream = client.api.build(path=str(ctx), tag=plan.tag, rm=True, forcerm=True, network_mode="none",
                                  nocache=no_cache, decode=True, labels=None)
        for item in stream:
            if "stream" in item:
                text = _ANSI_RE.sub("", item["stream"])
                for line in text.splitlines():
                    m = _STEP_RE.match(line.strip())
                    if m and m.group(3).startswith("FROM ") and last_layer is not None:
                        install_stage = last_layer
                    if line.strip().startswith("---> ") and " " not in line.strip()[5:]:
                        last_layer = line.strip()[5:]
                    if m:
                        steps.append(line.strip())
                        step_log = []
                        if on_step:
                            on_step(line.strip())
                    elif line.strip():
                        step_log.append(line.rstrip())
            if "aux" in item and isinstance(item["aux"], dict) and "ID" in item["aux"]:
                image_id = item["aux"]["ID"]
            if "error" in item:
                failing = steps[-1] if steps else "the first step"
                failing = failing if len(failing) <= 90 else failing[:87] + "..."
                log = "\n".join(step_log[-40:])
                reason = _ANSI_RE.sub("", item["error"]).strip()
                m = re.search(r"returned a non-zero code: \d+", reason)
                reason = m.group(0) if m else reason[-300:]
                raise BuildError(
                    f"the image build failed at {failing}: {reason}"
                    + (f"\n--- log of that step ---\n{log}" if log else ""),
                    hint="the step's log is above; fix the lock or base image and build again",
                )
    if image_id is None:
        with translated("reading the built image", image=plan.tag):
            image_id = client.images.get(plan.tag).id
    if install_stage is not None:
        _remove_quietly(client, install_stage)
    return image_id, steps


def _remove_quietly(client: docker.DockerClient, image: str) -> None:
    try:
        client.images.remove(image)
    except Exception:  # noqa: BLE001 - shared with another image or already gone: keeping it is harmless
        pass


def _tag(client: docker.DockerClient, image_id: str, tag: str) -> None:
    repo, _, version = tag.rpartition(":")
    with translated("tagging the image"):
        client.api.tag(image_id, repo, version)


def push_image(client: docker.DockerClient, image_id: str, repository: str, tag: str) -> str:
    """Push to REGISTRY/REPO and return the registry digest reference ``repo@sha256:...``.

    Raises:
        RegistryError: the registry refused or is unreachable.
    """
    _tag(client, image_id, f"{repository}:{tag}")
    digest = None
    with translated(f"pushing to {repository}"):
        for item in client.api.push(repository, tag=tag, stream=True, decode=True):
            if "error" in item:
                raise RegistryError(f"push to {repository} failed: {item['error'].strip()}",
                                    hint="check that the registry is running and reachable from the engine")
            aux = item.get("aux")
            if isinstance(aux, dict) and aux.get("Digest"):
                digest = aux["Digest"]
    if not digest:
        raise RegistryError(f"push to {repository} reported no digest")
    return f"{repository}@{digest}"
