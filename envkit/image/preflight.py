"""Checks before an image build that would otherwise fail late: free space for the wheels and what they unpack to,
and a C compiler in the base when the lock holds triton (torch.compile's GPU backend).

A CUDA lock's wheels alone are several GB (torch, cuBLAS, cuDNN, NCCL...); the build holds them as its context,
unpacks them into the first stage and copies the venv into the image, so a full disk surfaces after minutes as an
opaque "no space left on device". :func:`check_space` says so before anything starts.

Triton compiles a small C launcher for every kernel it builds, with the system's C compiler and ``Python.h``. A
Debian minbase has neither, and the image build has no network to install them, so they come with the base:
``envkit base debian bookworm --python 3.11 --compiler``, which labels the image :data:`LABEL_BASE_COMPILER`.
:func:`compiler_warning` says when a triton lock sits on a base without one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from envkit.engine import Engine
from envkit.errors import BuildError
from envkit.lock.model import Lockfile
from envkit.settings import LABEL_BASE_COMPILER

# The build needs the wheels as its context, the venv they unpack to in the install stage (about twice their size:
# shared objects compress little) and the venv again as the image's layer: about five times the wheels, at peak.
SPACE_FACTOR = 5
SPACE_MARGIN = 2**30


def needed_bytes(wheels: Iterable[Path]) -> int:
    """Bytes of disk a build of these wheels needs at its peak (see :data:`SPACE_FACTOR`)."""
    return SPACE_FACTOR * sum(p.stat().st_size for p in wheels) + SPACE_MARGIN


def check_space(engine: Engine, wheels: list[Path]) -> None:
    """Refuse a build that cannot fit in the engine's data root, when that folder is on this host.

    A remote engine (``DOCKER_HOST=tcp://...``) is not checked: its disk is not ours to see.

    Raises:
        BuildError: naming the space needed, the space free and where.
    """
    root = engine.facts().get("root_dir")
    if not root or not os.path.isdir(root) or not _local_engine():
        return
    need, free = needed_bytes(wheels), shutil.disk_usage(root).free
    if free < need:
        raise BuildError(f"not enough free space for this build: about {need / 2**30:.1f} GiB needed in {root} "
                         f"(Docker's data root), {free / 2**30:.1f} GiB free",
                         hint="free space there (remove images you no longer need), or move Docker's data-root")


def _local_engine() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return not host or host.startswith("unix://")


def compiler_warning(engine: Engine, lock: Lockfile) -> str | None:
    """One line when the lock holds triton and its base image has no C compiler (torch.compile would fail at its
    first GPU kernel); None otherwise."""
    if not any(p.name == "triton" for p in lock.packages):
        return None
    base = engine.find_image(lock.base.digest)
    if base is None or base.labels.get(LABEL_BASE_COMPILER):
        return None
    return (f"lock {lock.name} holds triton, but its base {lock.base.ref} has no C compiler or Python headers: "
            "torch.compile on the GPU will fail in this image (make the base with `envkit base ... --compiler` and "
            "lock again)")
