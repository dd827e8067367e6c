"""Pure rendering of what goes into an image build: the Dockerfile, the pinned requirements, labels, build key.

Nothing here touches the engine or the network, so it is unit-tested as text and used by ``envkit build --dry-run``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from envkit import __version__, cpuprofile
from envkit.errors import LockfileError
from envkit.lock.cuda import cuda_major, lock_cuda
from envkit.lock.model import Lockfile, check_values
from envkit.lock.values import has_control, shown
from envkit.resources import docker_file, injob_sources
from envkit.settings import (
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
    """Everything a build needs besides the wheels themselves."""

    dockerfile: str
    requirements: str
    site_files: dict[str, bytes]
    labels: dict[str, str]
    build_key: str
    tag: str


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
    cuda = lock_cuda(lock)
    return {
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
        "org.opencontainers.image.base.digest": lock.base.digest,
    }


def _quote(value: str) -> str:
    """``value`` as one double-quoted Dockerfile word.

    Inside double quotes the builder takes backslash, quote and dollar as escapes and expands ``$VAR``, so those
    three are escaped; a control character (a newline would start a new instruction) is refused.
    """
    if has_control(value):
        raise LockfileError(f"the Dockerfile value {shown(value)} contains a control character")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_dockerfile(lock: Lockfile, cpu_profile: str, build_key: str) -> str:
    """The Dockerfile text. Every lock value in it was checked (:func:`envkit.lock.model.check_values`): a lock made
    in code, not read from a file, is checked here too, since a newline in a name or key would add instructions.

    Raises:
        LockfileError: a value of the lock cannot be written into a Dockerfile.
    """
    check_values(lock, f"lock {shown(lock.name)}")
    template = docker_file("Dockerfile.template").read_text(encoding="utf-8")
    env = image_env(lock, cpu_profile)
    env_lines = " \\\n    ".join(f"{k}={_quote(v)}" for k, v in env.items())
    label_lines = " \\\n      ".join(f"{_quote(k)}={_quote(v)}" for k, v in labels(lock, cpu_profile, build_key).items())
    return template.format(
        lock_name=lock.name,
        lock_sha=lock.content_sha256[:12],
        envkit_version=__version__,
        base_digest=lock.base.digest,
        venv=IMAGE_VENV,
        site_packages=site_packages(lock),
        env_lines=env_lines,
        label_lines=label_lines,
    )


def compute_build_key(lock: Lockfile, cpu_profile: str, files: dict[str, bytes]) -> str:
    """What decides the image: the lock, envkit's version, the CPU profile and the in-image files' bytes.

    A change to the bootstrap rebuilds the image; the same inputs find the same image (a cache hit).
    """
    h = hashlib.sha256()
    h.update(f"{lock.content_sha256}\0{__version__}\0{cpu_profile}\0".encode())
    template = docker_file("Dockerfile.template").read_bytes()
    h.update(hashlib.sha256(template).digest())
    # What envkit's code renders into the Dockerfile (ENV, labels) decides the image too.
    rendered = {"env": image_env(lock, cpu_profile), "labels": labels(lock, cpu_profile, "")}
    h.update(hashlib.sha256(json.dumps(rendered, sort_keys=True).encode()).digest())
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def plan_build(lock: Lockfile, cpu_profile: str = "native") -> BuildPlan:
    files = in_image_files()
    key = compute_build_key(lock, cpu_profile, files)
    return BuildPlan(
        dockerfile=render_dockerfile(lock, cpu_profile, key),
        requirements=render_requirements(lock),
        site_files=files,
        labels=labels(lock, cpu_profile, key),
        build_key=key,
        tag=f"envkit/{lock.name}:{key[:12]}",
    )
