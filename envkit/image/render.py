"""Pure planning of an image build: the pinned requirements, the in-image files, ENV, labels, the recipe and the key.

Nothing here touches the engine or the network, so it is unit-tested as data and printed by
``envkit build --dry-run`` (:func:`render_plan`). Every value of the plan goes into an image config envkit writes
as JSON (:mod:`envkit.image.oci`), never into a Dockerfile or a shell line, so a lock value cannot add an
instruction; a control character is refused all the same (:func:`envkit.lock.model.check_values`).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass

from envkit import __version__, cpuprofile
from envkit.image import assemble
from envkit.lock.cuda import cuda_major, lock_cuda
from envkit.lock.model import Lockfile, check_values
from envkit.lock.values import shown
from envkit.resources import docker_file, injob_sources
from envkit.settings import (
    CPU_PROFILES,
    IMAGE_VENV,
    IN_IMAGE_PACKAGE,
    LABEL_BUILD_KEY,
    LABEL_CPU_PROFILE,
    LABEL_CUDA,
    LABEL_LOCK_NAME,
    LABEL_LOCK_SHA,
    LABEL_MANAGED,
    LABEL_VERSION,
)

# Files copied into the venv's site-packages of every image: the in-job package (envkit/injob/, as envkit_injob/:
# one copy of the code for host and image) and the .pth line that activates the bootstrap.
IN_IMAGE_DOCKER_FILES = ("envkit-bootstrap.pth",)


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build needs besides the base and the wheels themselves."""

    requirements: str
    site_files: dict[str, bytes]
    env: dict[str, str]
    labels: dict[str, str]
    recipe: str
    build_key: str
    tag: str
    epoch: int
    venv_command: list[str]


def site_packages(lock: Lockfile) -> str:
    return f"{IMAGE_VENV}/lib/python{lock.python}/site-packages"


def in_image_files() -> dict[str, bytes]:
    """The files that go into every image's site-packages, by path relative to it."""
    files = {f"{IN_IMAGE_PACKAGE}/{name}": data for name, data in injob_sources().items()}
    for name in IN_IMAGE_DOCKER_FILES:
        files[name] = docker_file(name).read_bytes()
    return files


def render_requirements(lock: Lockfile) -> str:
    """pip requirement lines with their hashes, for `pip install --require-hashes --no-index`."""
    lines = [f"{p.name}=={p.version} --hash=sha256:{p.sha256}" for p in lock.packages]
    return "\n".join(lines) + "\n"


def image_env(lock: Lockfile, cpu_profile: str) -> dict[str, str]:
    """ENV of the image: the lock's determinism environment, the venv on PATH, the CPU profile and, for a CUDA lock,
    ``NVIDIA_REQUIRE_CUDA``: the container toolkit then refuses to start it on a driver older than the wheels'
    CUDA major (CUDA's minor-version compatibility makes the major the requirement)."""
    env = dict(lock.environment)
    cuda = lock_cuda(lock)
    if cuda:
        env["NVIDIA_REQUIRE_CUDA"] = f"cuda>={cuda_major(cuda)}.0"
    env["PATH"] = f"{IMAGE_VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["VIRTUAL_ENV"] = IMAGE_VENV
    env["ENVKIT_CPU_PROFILE"] = cpu_profile
    env.update(cpuprofile.image_env(cpu_profile))
    numpy = next((p.version for p in lock.packages if p.name == "numpy"), None)
    env.update(cpuprofile.numpy_env(cpu_profile, numpy))
    return dict(sorted(env.items()))


def labels(lock: Lockfile, cpu_profile: str, build_key: str) -> dict[str, str]:
    """The image's labels: no time and no host value in them, so they are the same on every build."""
    cuda = lock_cuda(lock)
    out = {
        **({LABEL_CUDA: cuda} if cuda else {}),
        LABEL_MANAGED: "true",
        LABEL_LOCK_SHA: lock.content_sha256,
        LABEL_LOCK_NAME: lock.name,
        LABEL_VERSION: __version__,
        LABEL_CPU_PROFILE: cpu_profile,
        LABEL_BUILD_KEY: build_key,
        "org.opencontainers.image.title": f"envkit-{lock.name}",
        "org.opencontainers.image.description": f"envkit image for lock {lock.name} (Python {lock.python})",
        "org.opencontainers.image.version": lock.content_sha256[:12],
        "org.opencontainers.image.vendor": "envkit",
        "org.opencontainers.image.base.name": lock.base.ref,
    }
    if lock.base.digest:  # a registry base's manifest digest, or a local base's image ID
        out["org.opencontainers.image.base.digest"] = lock.base.digest
    return out


def recipe_hash(lock: Lockfile, files: dict[str, bytes] | None = None) -> str:
    """What envkit itself puts into the image besides the lock: its version, the in-image files' bytes and the
    assembly recipe. A lock's expected image IDs hold for one recipe (``image_parts.recipe``)."""
    files = in_image_files() if files is None else files
    h = hashlib.sha256()
    h.update(f"{__version__}\0{assemble.recipe_text(lock.python)}\0".encode())
    # What envkit's code writes into the config from the lock (ENV, labels) decides the image too.
    rendered = {p: {"env": image_env(lock, p), "labels": labels(lock, p, "")} for p in CPU_PROFILES}
    h.update(hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).digest())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def compute_build_key(lock: Lockfile, cpu_profile: str, recipe: str) -> str:
    """What decides the image: the lock, the CPU profile and envkit's recipe (version, in-image files, assembly).

    A change to the bootstrap rebuilds the image; the same inputs find the same image (a cache hit).
    """
    return hashlib.sha256(f"{lock.content_sha256}\0{cpu_profile}\0{recipe}".encode()).hexdigest()


def plan_build(lock: Lockfile, cpu_profile: str = "native") -> BuildPlan:
    """The plan of ``lock``'s image for ``cpu_profile``. A lock made in code, not read from a file, is checked here
    too.

    Raises:
        LockfileError: a value of the lock has the wrong shape or a control character.
    """
    check_values(lock, f"lock {shown(lock.name)}")
    files = in_image_files()
    recipe = recipe_hash(lock, files)
    key = compute_build_key(lock, cpu_profile, recipe)
    return BuildPlan(
        requirements=render_requirements(lock),
        site_files=files,
        env=image_env(lock, cpu_profile),
        labels=labels(lock, cpu_profile, key),
        recipe=recipe,
        build_key=key,
        tag=f"envkit/{lock.name}:{key[:12]}",
        epoch=lock.epoch,
        venv_command=assemble.venv_command(lock.python),
    )


def describe_base(lock: Lockfile) -> str:
    """How the build gets the base, in one line."""
    base = lock.base
    if base.kind == "debian" and base.debian is not None:
        return (f"Debian {base.debian.suite}, made by mmdebstrap from {len(base.debian.debs)} pinned .debs "
                f"(requested: {', '.join(base.debian.packages)}; resolved with mmdebstrap {base.debian.mmdebstrap})")
    if base.kind == "registry":
        return f"pulled by digest: {base.pull_ref}"
    return f"the local image {base.ref} ({base.digest}): builds only on an engine that has it"


def render_plan(lock: Lockfile, plan: BuildPlan, cpu_profile: str) -> str:
    """What ``envkit build --dry-run`` prints: every step and value of the build, with nothing run."""
    from envkit.image.oci import rfc3339

    expected = lock.images.get(cpu_profile)
    lines = [
        f"# envkit build plan: lock {lock.name} ({lock.content_sha256[:12]}), envkit {__version__}, "
        f"CPU profile {cpu_profile}",
        f"base:      {describe_base(lock)}",
        f"venv:      {IMAGE_VENV}, {len(lock.packages)} wheels by sha256 (pip --no-index --require-hashes "
        f"--no-deps), hash-based bytecode in {assemble.COMPILE_SHARDS} fixed shards, no network",
        f"image:     base layers + the venv as one layer (sorted, owner 0:0, mtimes clamped), a config envkit "
        f"writes dated {rfc3339(plan.epoch)}, loaded with docker load",
        f"expected:  {expected or 'none recorded (record it with `envkit build LOCK --pin`)'}",
        f"build key: {plan.build_key}",
        f"tag:       {plan.tag}",
        "",
        "venv command (in a container of the base, with the wheels, requirements and in-image files mounted "
        "read-only):",
        "  " + " ".join(shlex.quote(w) for w in plan.venv_command[:2]),
        *("    " + line for line in plan.venv_command[2].splitlines()),
        f"requirements ({assemble.REQUIREMENTS_MOUNT}):",
        *("  " + line for line in plan.requirements.splitlines()),
        f"in-image files (into {site_packages(lock)}):",
        *(f"  {name} ({len(data)} bytes)" for name, data in sorted(plan.site_files.items())),
        "env:",
        *(f"  {k}={v}" for k, v in plan.env.items()),
        "labels:",
        *(f"  {k}={v}" for k, v in plan.labels.items()),
    ]
    return "\n".join(lines) + "\n"
