"""Which CUDA a lockfile's wheels were built for, and the NVIDIA driver that CUDA needs.

A CUDA lock pins the CUDA runtime as wheels (``nvidia-cuda-runtime`` 13.0.96, or ``nvidia-cuda-runtime-cu12``
12.4.127 in the older naming), so the version is read from the pins, not from this host: a lock made on a machine
without a GPU knows it too. The image build writes it as ``NVIDIA_REQUIRE_CUDA`` (the container toolkit then refuses
a host whose driver is older) and as a label; ``envkit run``, ``replay`` and ``doctor`` compare it with the driver's.

The rule is CUDA's own minor-version compatibility: a driver runs every runtime of its CUDA major and older, so the
driver's CUDA version (what NVML reports, 12.4 for driver 550) must be at least the image's CUDA *major*.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from envkit.lock.model import Lockfile, PinnedPackage

# The first Linux driver of each CUDA major (NVIDIA's CUDA release notes, table 3): the hint a refusal gives.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}

_RUNTIME = re.compile(r"nvidia-cuda-runtime(?:-cu(\d+))?")
_SUFFIX = re.compile(r"nvidia-[a-z0-9-]+-cu(\d+)")
_TORCH_LOCAL = re.compile(r"\+cu(\d+)(\d)$")  # torch 2.5.1+cu124 -> 12.4


def lock_cuda(lock: Lockfile) -> str | None:
    """The CUDA version (``"13.0"``) the lock's wheels need, or None for a lock without CUDA."""
    return packages_cuda(lock.packages)


def packages_cuda(packages: Iterable[PinnedPackage]) -> str | None:
    """:func:`lock_cuda` on a list of pins: the CUDA runtime wheel first, then a ``-cuNN`` wheel, then torch's
    local version (``+cu130``)."""
    packages = list(packages)
    for p in packages:
        if _RUNTIME.fullmatch(p.name):
            parts = p.version.split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return f"{int(parts[0])}.{int(parts[1])}"
    for p in packages:
        m = _SUFFIX.fullmatch(p.name)
        if m:
            return f"{int(m.group(1))}.0"
    for p in packages:
        if p.name == "torch":
            m = _TORCH_LOCAL.search(p.version)
            if m:
                return f"{int(m.group(1))}.{m.group(2)}"
    return None


def cuda_major(version: str | None) -> int | None:
    """``"13.0"`` -> 13; None or a malformed version -> None."""
    head = str(version or "").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def driver_supports(driver_cuda: str | None, image_cuda: str | None) -> bool | None:
    """Whether a driver whose CUDA version is ``driver_cuda`` (NVML: 12.4) runs an image built for ``image_cuda``:
    at least the image's CUDA major. None when either is unknown."""
    have, need = cuda_major(driver_cuda), cuda_major(image_cuda)
    if have is None or need is None:
        return None
    return have >= need


def min_driver(image_cuda: str | None) -> str | None:
    """The first driver release of the image's CUDA major (``"580.65.06"`` for 13.x), for hints."""
    major = cuda_major(image_cuda)
    return MIN_DRIVER.get(major) if major is not None else None
