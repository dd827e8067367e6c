"""The GPUs of a job: the ``--gpus`` request, which of the host's devices it gives the job, and the check made before
a job starts.

A request is ``none``, ``all``, a count ``N`` or ``device=ID[,ID...]`` (an index, a GPU UUID, a MIG UUID or a MIG
index ``GPU:SLICE``), as ``docker run --gpus`` takes them. Docker gives a count N the devices with indices 0..N-1,
so that is what a record says a count got.

:func:`job_section` cuts the host's GPU fingerprint (:func:`envkit.fingerprint.gpu_section`) down to the job's own
devices: a ``--gpus 1`` run made on an 8-GPU host compares equal to one made on a 1-GPU host, and a ``--gpus none``
run records no GPU at all, so hosts whose GPUs differ do not refuse it.

:func:`check` runs before a container is made (a run then ends ``failed``, a replay is refused up front): enough
GPUs, the device ids present, and a driver whose CUDA version is at least the image's CUDA major
(:mod:`envkit.lock.cuda`). Each failure is one :class:`~envkit.errors.GpuError` line with what to do.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from envkit.engine import Engine, GpuRequest
from envkit.errors import GpuError
from envkit.lock.cuda import cuda_major, driver_supports, min_driver
from envkit.settings import LABEL_CUDA

_ID = r"(?:\d+|\d+:\d+|GPU-[0-9A-Fa-f-]{8,}|MIG-[0-9A-Za-z/-]{8,})"
_DEVICES = re.compile(rf"device={_ID}(?:,{_ID})*")
NONE_REASON = "the job was given no GPU (--gpus none)"


def parse_gpus(value: str) -> str:
    """The request in its one spelling (``all``, ``none``, ``2``, ``device=0,2``).

    Raises:
        ValueError: anything else, with what is accepted.
    """
    text = str(value).strip()
    if text in ("all", "none"):
        return text
    if text.isdigit() and int(text) > 0:
        return str(int(text))
    if text.startswith("device=") and _DEVICES.fullmatch(text):
        ids = list(dict.fromkeys(text[len("device="):].split(",")))
        return "device=" + ",".join(ids)
    raise ValueError(f"{value!r} is not all, none, a positive count or device=ID[,ID...] (index, GPU UUID, MIG UUID)")


def device_ids(gpus: str) -> list[str]:
    """The ids of a ``device=`` request ([] for the other forms)."""
    return gpus[len("device="):].split(",") if gpus.startswith("device=") else []


def gpu_request(gpus: str) -> GpuRequest | None:
    """The engine's device request for a ``--gpus`` value (None for ``none``)."""
    if gpus == "none":
        return None
    if gpus == "all":
        return GpuRequest(count=-1)
    ids = device_ids(gpus)
    return GpuRequest(device_ids=tuple(ids)) if ids else GpuRequest(count=int(gpus))


def requested_count(gpus: str, host: dict[str, Any]) -> int:
    """How many devices the request gives on a host (``all``: as many as it has)."""
    if gpus == "none":
        return 0
    if gpus == "all":
        return int(host.get("count") or 0)
    ids = device_ids(gpus)
    return len(ids) if ids else int(gpus)


def _find(host: dict[str, Any], ident: str) -> dict[str, Any] | None:
    """The job's view of one device id: a host device, or a MIG slice described as a device of its own."""
    for dev in host.get("devices") or []:
        if ident in (str(dev.get("index")), dev.get("uuid")):
            return dev
        for mig in dev.get("mig_devices") or []:
            if ident in (mig.get("index"), mig.get("uuid")):
                name = str(mig.get("name") or "")
                return {
                    "index": mig.get("index"), "name": dev.get("name"), "uuid": mig.get("uuid"),
                    "parent_uuid": dev.get("uuid"), "compute_capability": dev.get("compute_capability"),
                    "memory_bytes": mig.get("memory_bytes"), "sm_count": mig.get("sm_count"), "mig_mode": "enabled",
                    # NVML names a slice "<parent> MIG 1g.10gb"; CUDA and torch report the parent's name alone.
                    "mig_profile": name.split(" MIG ", 1)[1] if " MIG " in name else name or None,
                }
    return None


def selected_devices(gpus: str, host: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The host devices a request gives the job, and the requested ids this host does not have."""
    devices = list(host.get("devices") or [])
    if gpus == "none":
        return [], []
    if gpus == "all":
        return devices, []
    ids = device_ids(gpus)
    if not ids:
        return devices[:int(gpus)], []
    found = [(i, _find(host, i)) for i in ids]
    return [d for _, d in found if d is not None], [i for i, d in found if d is None]


def job_section(host: dict[str, Any], gpus: str) -> dict[str, Any]:
    """The ``gpus`` section of a run's fingerprint: the host's GPU facts, cut down to the devices the job was given.

    Args:
        host: :func:`envkit.fingerprint.gpu_section` of this host.
        gpus: the job's request.
    """
    if gpus == "none":
        return {"requested": "none", "available": False, "reason": NONE_REASON}
    devices, _missing = selected_devices(gpus, host)
    section = {k: v for k, v in host.items() if k not in ("devices", "count")}
    section.update(requested=gpus, host_count=int(host.get("count") or 0), count=len(devices), devices=devices,
                   available=bool(devices))
    return section


def check(gpus: str, host: dict[str, Any], image_cuda: str | None, *, replay: bool = False,
          used: int | None = None) -> None:
    """Refuse a job whose GPUs this host cannot give: checked against NVML before any container is made.

    Args:
        gpus: the request.
        host: this host's :func:`envkit.fingerprint.gpu_section`.
        image_cuda: the CUDA version the image's wheels need (None: not a CUDA image, or unknown).
        replay: word the messages for a replay (the run used N GPUs).
        used: how many GPUs the recorded run had (a replay of ``--gpus all`` needs as many, not this host's all).

    Raises:
        GpuError: no GPU, fewer than asked for, an id this host lacks, or a driver older than the image's CUDA.
    """
    if gpus == "none":
        return
    asked = f"the run used --gpus {gpus}" if replay else f"--gpus {gpus}"
    if replay and used is not None and gpus == "all":
        asked = f"the run used {used} GPU{'s' if used != 1 else ''} (--gpus all)"
    if not host.get("available"):
        raise GpuError(f"{asked}, and this host has no usable NVIDIA GPU ({host.get('reason') or 'none found'})",
                       hint="run on a host with NVIDIA GPUs and the NVIDIA container toolkit"
                            + (", or replay with --gpus none (a CPU replay is marked mismatched)" if replay
                               else ", or run with --gpus none"))
    have = int(host.get("count") or 0)
    need = max(requested_count(gpus, host), used or 0)
    _devices, missing = selected_devices(gpus, host)
    if missing:
        raise GpuError(f"{asked}, and this host has no GPU {missing[0]} (it has {have}: indices 0-{have - 1})",
                       hint="`envkit fingerprint` lists this host's GPUs and their UUIDs")
    if need > have:
        raise GpuError(f"{asked}, and this host has {have} GPU{'s' if have != 1 else ''}",
                       hint=f"{'replay' if replay else 'run'} with --gpus {have} or fewer"
                            + (" (a replay on fewer GPUs is marked mismatched)" if replay else ""))
    ok = driver_supports(host.get("cuda_driver_version"), image_cuda)
    if ok is False:
        raise GpuError(driver_line(host, image_cuda),
                       hint=f"install NVIDIA driver {min_driver(image_cuda) or 'a newer release'} or newer, or use a "
                            f"lock with CUDA {cuda_major(host.get('cuda_driver_version'))} wheels")


def driver_line(host: dict[str, Any], image_cuda: str | None) -> str:
    """One line: the driver, the CUDA it supports, and what the image needs."""
    need = min_driver(image_cuda)
    return (f"the NVIDIA driver {host.get('driver_version') or '?'} supports CUDA up to "
            f"{host.get('cuda_driver_version') or '?'}; the image's CUDA {image_cuda} wheels need CUDA "
            f"{cuda_major(image_cuda)}.x" + (f" (driver {need.split('.')[0]} or newer)" if need else ""))


def image_cuda(engine: Engine, image_id: str | None, lock_text: str | None = None) -> str | None:
    """The CUDA version an image needs: its ``io.envkit.cuda`` label, else from its lockfile's text."""
    if image_id:
        img = engine.find_image(image_id)
        if img is not None and img.labels.get(LABEL_CUDA):
            return img.labels[LABEL_CUDA]
    if lock_text:
        return lock_text_cuda(lock_text)
    return None


def request_cuda(engine: Engine, lock_path: Path | None, image: str | None) -> str | None:
    """The CUDA version a run's image will need, known before the image is built: from the lockfile, or the
    ``--image``'s label. None when unknown (the lock does not load: resolving the image reports that)."""
    from envkit.errors import LockfileError
    from envkit.lock.cuda import lock_cuda
    from envkit.lock.model import load_lockfile

    if lock_path is not None:
        try:
            return lock_cuda(load_lockfile(Path(lock_path)))
        except LockfileError:
            return None
    return image_cuda(engine, image) if image else None


def lock_text_cuda(text: str) -> str | None:
    """The CUDA version of a lockfile given as text (None when it does not parse: the image decides then)."""
    import yaml

    from envkit.errors import LockfileError
    from envkit.lock.cuda import lock_cuda
    from envkit.lock.model import parse_lockfile
    from envkit.lock.yamlfile import load_text

    try:
        return lock_cuda(parse_lockfile(load_text(text)))
    except (LockfileError, yaml.YAMLError, RecursionError):
        return None
