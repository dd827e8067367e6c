"""Whether this host can run GPU jobs, checked the way a job uses them (for ``envkit doctor``).

Docker's ``--gpus`` needs only the NVIDIA container toolkit's hook on the daemon's PATH, not an ``nvidia`` runtime
in its runtimes, so the check is what a job does: a throwaway container with a device request for every GPU,
running ``nvidia-smi -L`` (the toolkit mounts the driver's tools into any glibc image). Then the driver's CUDA
version against each CUDA lock of the project: at least the lock's CUDA major.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.engine import ContainerSpec, Engine, GpuRequest
from envkit.errors import EnvkitError, LockfileError
from envkit.lock.cuda import driver_supports, lock_cuda
from envkit.run.gpus import driver_line
from envkit.settings import LABEL_MANAGED, LABEL_RUN

BASE_TAGS = ("envkit/base:bookworm-py3.11", "envkit/base:bookworm-py3.11-dev", "envkit/base:trixie-py3.13")


@dataclass
class GpuCheck:
    name: str
    ok: bool
    detail: str
    fix: str | None = None


def host_line(gpus: dict[str, Any]) -> str:
    """``8 x NVIDIA H100 80GB HBM3; driver 580.65.06 (CUDA 13.0)``."""
    names: dict[str, int] = {}
    for dev in gpus.get("devices") or []:
        label = str(dev.get("name"))
        if dev.get("mig_mode") == "enabled":
            label += f" (MIG, {len(dev.get('mig_devices') or [])} slices)"
        names[label] = names.get(label, 0) + 1
    listing = ", ".join(f"{n} x {name}" for name, n in names.items())
    return f"{listing}; driver {gpus.get('driver_version')} (CUDA {gpus.get('cuda_driver_version')})"


def container_check(engine: Engine, gpus: dict[str, Any]) -> GpuCheck:
    """A container with ``--gpus all`` running ``nvidia-smi -L``: does it see the GPUs NVML sees?"""
    image = _test_image(engine)
    if image is None:
        return GpuCheck("GPU containers", False, "no local image to start a test container from",
                        "make one with `envkit base debian bookworm --python 3.11`, then run envkit doctor again")
    spec = ContainerSpec(image=image, command=["nvidia-smi", "-L"], network="none", gpus=GpuRequest(count=-1),
                         labels={LABEL_RUN: "doctor"}, cap_drop=("ALL",), security_opt=("no-new-privileges",))
    try:
        out = engine.run_output(spec).decode(errors="replace")
    except EnvkitError as exc:
        return GpuCheck("GPU containers", False, f"a container with --gpus all did not run: {exc.message}",
                        exc.hint or "install the NVIDIA container toolkit")
    seen = [line for line in out.splitlines() if line.startswith("GPU ")]
    want = int(gpus.get("count") or 0)
    if len(seen) != want:
        return GpuCheck("GPU containers", False, f"a container with --gpus all sees {len(seen)} GPU(s), NVML sees "
                        f"{want}", "check the NVIDIA container toolkit's configuration (nvidia-ctk)")
    return GpuCheck("GPU containers", True, f"a container with --gpus all sees {len(seen)} GPU(s)")


def driver_checks(gpus: dict[str, Any], locks: list[Path]) -> list[GpuCheck]:
    """The driver against each CUDA lock: one line each."""
    checks = []
    for path in locks:
        from envkit.lock.model import load_lockfile

        try:
            cuda = lock_cuda(load_lockfile(path))
        except LockfileError as exc:
            checks.append(GpuCheck(f"driver vs {path.name}", False, exc.message, exc.hint))
            continue
        if cuda is None:
            continue  # a CPU lock
        ok = driver_supports(gpus.get("cuda_driver_version"), cuda)
        if ok is False:
            checks.append(GpuCheck(f"driver vs {path.name}", False, driver_line(gpus, cuda),
                                   "update the NVIDIA driver, or lock with wheels of the driver's CUDA major"))
        else:
            checks.append(GpuCheck(f"driver vs {path.name}", True, f"CUDA {cuda} wheels run on driver "
                                   f"{gpus.get('driver_version')} (CUDA {gpus.get('cuda_driver_version')})"))
    return checks


def _test_image(engine: Engine) -> str | None:
    for tag in BASE_TAGS:
        if engine.find_image(tag) is not None:
            return tag
    managed = engine.images_labelled(LABEL_MANAGED, "true")
    return managed[0].id if managed else None
