"""Checks before an image build that would otherwise fail late: free space for the wheels and what they unpack to,
and a C compiler in the base when the lock holds triton (torch.compile's GPU backend).

A CUDA lock's wheels alone are several GB (torch, cuBLAS, cuDNN, NCCL...); the build unpacks them into a venv,
writes it as a layer and the engine applies it, so a full disk surfaces after minutes as an opaque "no space left
on device". :func:`check_space` says so before anything starts.

Triton compiles a small C launcher for every kernel it builds, with the system's C compiler and ``Python.h``. A
Debian minbase has neither, and the image build has no network to install them, so they come with the base: a spec
naming ``envkit/base:bookworm-py3.11-dev`` pins gcc, libc6-dev and python3-dev with the rest of the base's .debs
(the base is labelled :data:`LABEL_BASE_COMPILER`), and Docker's ``python:3.11-bookworm`` has them too.
:func:`compiler_warning` says when a triton lock sits on a base without one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from envkit.engine import ContainerSpec, Engine
from envkit.errors import BuildError, EnvkitError
from envkit.lock.debian import COMPILER_PACKAGES
from envkit.lock.model import Lockfile
from envkit.settings import LABEL_BASE_COMPILER

# The build needs the venv the wheels unpack to (about twice their size: shared objects compress little), the venv
# as a layer file, and the engine's copy of that layer while `docker load` applies it: about five times the wheels.
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


def compiler_warning(engine: Engine, lock: Lockfile, base_id: str) -> str | None:
    """One line when the lock holds triton and its base has no C compiler or ``Python.h`` (torch.compile would fail
    at its first GPU kernel); None otherwise.

    A Debian base says so by its packages; another base by its label, else a throwaway container asks it.
    """
    if not any(p.name == "triton" for p in lock.packages):
        return None
    if lock.base.debian is not None:
        if set(COMPILER_PACKAGES) <= set(lock.base.debian.packages):
            return None
        fix = f"name the base {lock.base.ref}-dev in the spec and lock again"
    else:
        image = engine.find_image(base_id)
        if image is not None and image.labels.get(LABEL_BASE_COMPILER):
            return None
        try:
            engine.run_output(ContainerSpec(image=base_id, command=["sh", "-c", _HAS_COMPILER], network="none"))
            return None
        except EnvkitError:
            pass
        fix = "use a base with gcc and Python's headers (python:3.11-bookworm, or envkit/base:bookworm-py3.11-dev)"
    return (f"lock {lock.name} holds triton, but its base {lock.base.ref} has no C compiler or Python headers: "
            f"torch.compile on the GPU will fail in this image ({fix})")


_HAS_COMPILER = ("command -v cc >/dev/null && python3 -c 'import os, sysconfig; "
                 "os.stat(os.path.join(sysconfig.get_paths()[\"include\"], \"Python.h\"))'")
