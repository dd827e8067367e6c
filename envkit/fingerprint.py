"""The hardware and software fingerprint of a host, and which of its differences change numerics.

:func:`host_fingerprint` probes the CPU (vendor, model, the instruction sets kernels dispatch on), memory, kernel, OS,
the Docker engine when a client is given, and NVIDIA GPUs through NVML (or ``nvidia-smi``). Every probe is optional: one
that fails leaves its field ``None`` and its error text under the section's ``errors``; a host without GPUs gets
``{"available": false, "reason": ...}``. Nothing here raises. A run records the GPUs its *job* was given, not all of
the host's: :mod:`envkit.run.gpus` cuts this section down to them.

The ``container`` section (Python, torch, CUDA runtime, cuDNN, NCCL, MKL, oneDNN, ATen capability, threads) comes from
``envkit/injob/probe.py`` run inside the image and is merged in by the executor.

:func:`compare_fingerprints` tells replay and ``envkit diff`` which differences matter: :data:`FIELD_CLASSES` says,
per field, whether a difference can change the bits a job computes. The CPU fields (architecture, vendor, model,
instruction sets) are classed by the run's CPU profile, and :mod:`envkit.cpuprofile` owns that table.
"""

from __future__ import annotations

import os
import platform
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envkit import cpuprofile
from envkit.settings import CPU_PROFILES

if TYPE_CHECKING:
    from envkit.engine import Engine

SCHEMA_VERSION = 1

# Instruction sets that math libraries dispatch on (ATen's CPU capability, oneDNN ISA, MKL/OpenBLAS kernels): a
# difference means other kernels, which may sum in another order.
_NUMERIC_FLAGS = re.compile(
    r"(sse4_1|sse4_2|sse4a|avx.*|fma|fma4|f16c|xop|amx.*"  # x86
    r"|asimd.*|fphp|sve.*|bf16|i8mm|sme|sme[0-9ifb_].*)"  # aarch64 (not x86 smep)
)


# --- probing -----------------------------------------------------------------------------------------------------
def host_fingerprint(engine: Engine | None = None) -> dict[str, Any]:
    """This host's fingerprint: ``schema_version``, ``host``, ``gpus`` and, given an engine, ``engine``."""
    fp: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "host": host_section(), "gpus": gpu_section()}
    if engine is not None:
        fp["engine"] = engine_section(engine)
    return fp


class _Probes:
    """Runs probes, keeping each failure's text instead of raising."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a probe must never stop a run; the error is recorded
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            return None


def host_section() -> dict[str, Any]:
    """CPU, memory, kernel, OS and hostname of this machine."""
    probe = _Probes()
    cpu = probe("cpu", _cpuinfo) or {}
    section = {
        "arch": probe("arch", platform.machine),
        "cpu_vendor": cpu.get("vendor"),
        "cpu_model": cpu.get("model"),
        "cpu_flags": cpu.get("flags"),
        "logical_cores": probe("logical_cores", os.cpu_count),
        "cpus_available": probe("cpus_available", lambda: len(os.sched_getaffinity(0))),
        "memory_bytes": probe("memory_bytes", _memory_bytes),
        "kernel": probe("kernel", platform.release),
        "os": probe("os", _os_release),
        "hostname": probe("hostname", socket.gethostname),
        "errors": probe.errors,
    }
    return section


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Vendor, model name and numerics-relevant flags of the first CPU in /proc/cpuinfo (x86 or aarch64)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    # aarch64 kernels print "Features" and an implementer code instead of "flags" and a vendor name.
    flags = (fields.get("flags") or fields.get("Features") or "").split()
    return {
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "model": fields.get("model name") or fields.get("Model") or platform.processor() or None,
        "flags": sorted(f for f in set(flags) if _NUMERIC_FLAGS.fullmatch(f)),
    }


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _os_release(path: str = "/etc/os-release") -> str:
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if sep:
                values[key] = value.strip().strip('"')
    return values.get("PRETTY_NAME") or f"{values.get('ID', '?')} {values.get('VERSION_ID', '')}".strip()


def engine_section(engine: Engine) -> dict[str, Any]:
    """The engine's facts, or ``{"error": ...}`` when the engine does not answer."""
    from envkit.errors import EnvkitError

    try:
        return engine.facts()
    except EnvkitError as exc:  # a fingerprint without engine facts is still a fingerprint
        return {"error": exc.message}


def gpu_section() -> dict[str, Any]:
    """NVIDIA GPUs of this host: driver, CUDA driver version and, per device, name, UUID, compute capability,
    memory, MIG mode and (MIG enabled) its MIG devices with their SM counts.

    Read through NVML (nvidia-ml-py, a core dependency: pure ctypes over the driver's libnvidia-ml); where the
    bindings cannot be imported, ``nvidia-smi`` answers the same questions. ``{"available": false, "reason": ...}``
    without a driver or devices. ``source`` says which of the two answered.
    """
    try:
        import pynvml
    except ImportError:
        return _smi_section("nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound and friends: no usable driver
        return {"available": False, "reason": f"NVML cannot start ({exc}); no NVIDIA driver on this host"}
    try:
        probe = _Probes()
        count = probe("count", pynvml.nvmlDeviceGetCount) or 0
        section: dict[str, Any] = {
            "available": count > 0,
            "source": "nvml",
            "driver_version": probe("driver_version", lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": probe("cuda_driver_version",
                                         lambda: _cuda_version(pynvml.nvmlSystemGetCudaDriverVersion_v2())),
            "count": count,
            "devices": [_gpu_device(pynvml, i) for i in range(count)],
            "errors": probe.errors,
        }
        if not count:
            section["reason"] = "NVML sees no GPU"
        return section
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - nothing to do about a failed shutdown
            pass


def _gpu_device(pynvml: Any, index: int) -> dict[str, Any]:
    probe = _Probes()
    handle = probe("handle", lambda: pynvml.nvmlDeviceGetHandleByIndex(index))
    if handle is None:
        return {"index": index, "errors": probe.errors}
    device = {
        "index": index,
        "name": probe("name", lambda: _text(pynvml.nvmlDeviceGetName(handle))),
        "uuid": probe("uuid", lambda: _text(pynvml.nvmlDeviceGetUUID(handle))),
        "compute_capability": probe(
            "compute_capability", lambda: "{}.{}".format(*pynvml.nvmlDeviceGetCudaComputeCapability(handle))),
        "memory_bytes": probe("memory_bytes", lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)),
        "mig_mode": _mig_mode(pynvml, handle),
        "errors": probe.errors,
    }
    if device["mig_mode"] == "enabled":
        device["mig_devices"] = _mig_devices(pynvml, handle, index, probe)
    return device


def _mig_mode(pynvml: Any, handle: Any) -> str | None:
    """``enabled`` / ``disabled``; None for a GPU without MIG (NVML answers NotSupported: not an error)."""
    try:
        current = pynvml.nvmlDeviceGetMigMode(handle)[0]
    except Exception:  # noqa: BLE001 - NotSupported on GPUs without MIG, or an old driver
        return None
    return "enabled" if current == 1 else "disabled"


def _mig_devices(pynvml: Any, handle: Any, parent: int, probe: _Probes) -> list[dict[str, Any]]:
    """The MIG devices of a GPU: UUID, NVML's name (the parent's, plus the profile), memory and SM count (a slice has
    a fraction of the parent's SMs: cuBLAS picks other kernels)."""
    out = []
    slots = probe("mig_count", lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(handle)) or 0
    for slot in range(slots):
        try:
            mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception:  # noqa: BLE001 - NotFound: an empty slot
            continue
        attrs = probe(f"mig{slot}.attributes", lambda mig=mig: pynvml.nvmlDeviceGetAttributes(mig))
        out.append({
            "index": f"{parent}:{len(out)}",
            "uuid": probe(f"mig{slot}.uuid", lambda mig=mig: _text(pynvml.nvmlDeviceGetUUID(mig))),
            "name": probe(f"mig{slot}.name", lambda mig=mig: _text(pynvml.nvmlDeviceGetName(mig))),
            "memory_bytes": probe(f"mig{slot}.memory", lambda mig=mig: int(pynvml.nvmlDeviceGetMemoryInfo(mig).total)),
            "sm_count": int(attrs.multiprocessorCount) if attrs is not None else None,
            "gpu_slices": int(attrs.gpuInstanceSliceCount) if attrs is not None else None,
        })
    return out


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # older nvidia-ml-py returns bytes


def _cuda_version(value: int) -> str:
    return f"{value // 1000}.{value % 1000 // 10}"  # NVML encodes 12.4 as 12040


# --- nvidia-smi, where the NVML bindings are missing ---------------------------------------------------------------
_SMI_FIELDS = ("index", "name", "uuid", "compute_cap", "memory.total", "driver_version", "mig.mode.current")
_SMI_CUDA = re.compile(r"CUDA Version:\s*([0-9]+\.[0-9]+)")
_SMI_MIG = re.compile(r"^\s+MIG\s+(\S+)\s+Device\s+(\d+):\s+\(UUID:\s*(MIG-[^)\s]+)\)")
_SMI_TIMEOUT_S = 20


def _smi_section(why_not_nvml: str) -> dict[str, Any]:
    """:func:`gpu_section` from ``nvidia-smi`` (CSV queries and its banner for the CUDA version)."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"available": False, "reason": f"{why_not_nvml}, and nvidia-smi is not on PATH: no NVIDIA driver seen"}

    def smi(*args: str) -> str:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_SMI_TIMEOUT_S)
        if proc.returncode != 0:
            last = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
            raise RuntimeError(last[0] if last else f"nvidia-smi exited {proc.returncode}")
        return proc.stdout

    probe = _Probes()
    rows = probe("query", lambda: smi(f"--query-gpu={','.join(_SMI_FIELDS)}", "--format=csv,noheader,nounits"))
    if rows is None:
        return {"available": False, "reason": f"{why_not_nvml}; nvidia-smi failed ({probe.errors['query']})",
                "source": "nvidia-smi"}
    banner = probe("banner", lambda: smi()) or ""
    listing = probe("list", lambda: smi("-L")) or ""
    devices, driver = [], None
    for line in rows.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(_SMI_FIELDS):
            continue
        index, name, uuid, cap, mem, driver, mig = cells
        devices.append({
            "index": int(index) if index.isdigit() else index, "name": name, "uuid": uuid,
            "compute_capability": cap if re.fullmatch(r"\d+\.\d+", cap) else None,
            "memory_bytes": int(float(mem)) * 2**20 if re.fullmatch(r"[0-9.]+", mem) else None,
            "mig_mode": {"Enabled": "enabled", "Disabled": "disabled"}.get(mig), "errors": {},
        })
    _smi_mig(devices, listing)
    m = _SMI_CUDA.search(banner)
    section: dict[str, Any] = {"available": bool(devices), "source": "nvidia-smi", "driver_version": driver,
                               "cuda_driver_version": m.group(1) if m else None, "count": len(devices),
                               "devices": devices, "errors": probe.errors}
    if not devices:
        section["reason"] = "nvidia-smi lists no GPU"
    return section


def _smi_mig(devices: list[dict[str, Any]], listing: str) -> None:
    """MIG devices from ``nvidia-smi -L`` (profile and UUID; nvidia-smi gives no SM count)."""
    parent = None
    for line in listing.splitlines():
        if line.startswith("GPU "):
            head = line[4:].split(":", 1)[0]
            parent = next((d for d in devices if str(d["index"]) == head), None)
            continue
        m = _SMI_MIG.match(line)
        if m and parent is not None:
            parent.setdefault("mig_devices", []).append({
                "index": f"{parent['index']}:{m.group(2)}", "uuid": m.group(3),
                "name": f"{parent['name']} MIG {m.group(1)}", "memory_bytes": None, "sm_count": None,
                "gpu_slices": int(m.group(1)[0]) if m.group(1)[:1].isdigit() else None,
            })


# --- which differences matter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldClass:
    changes_numerics: bool
    why: str


_NOT_ARITHMETIC = "does not take part in the arithmetic"
_DIAGNOSTIC = FieldClass(False, "probe diagnostics")

# Field paths with list indices written as []; "section.*" covers every field below that section. The most specific
# entry wins; a field in no entry is treated as changing numerics (see classify()).
FIELD_CLASSES: dict[str, FieldClass] = {
    "schema_version": FieldClass(False, "the fingerprint's format, not the host"),
    # host.arch, host.cpu_vendor, host.cpu_model, host.cpu_flags: classed by the CPU profile (envkit.cpuprofile)
    "host.logical_cores": FieldClass(False, "the run pins its thread counts (container.threads)"),
    "host.cpus_available": FieldClass(False, "the run pins its thread counts (container.threads)"),
    "host.memory_bytes": FieldClass(False, f"memory size {_NOT_ARITHMETIC}"),
    "host.kernel": FieldClass(False, f"the kernel {_NOT_ARITHMETIC}"),
    "host.os": FieldClass(False, "the job runs on the image's userland, not the host's"),
    "host.hostname": FieldClass(False, f"the host's name {_NOT_ARITHMETIC}"),
    "host.errors.*": _DIAGNOSTIC,
    "engine.*": FieldClass(False, f"the container engine {_NOT_ARITHMETIC}"),
    "gpus.available": FieldClass(True, "GPU and CPU kernels differ"),
    "gpus.reason": _DIAGNOSTIC,
    "gpus.source": _DIAGNOSTIC,
    "gpus.requested": FieldClass(False, "the request; the devices it gave are compared below"),
    "gpus.host_count": FieldClass(False, "GPUs the job was not given take no part in it"),
    "gpus.count": FieldClass(True, "data-parallel jobs split their work by the number of devices"),
    # cuBLAS promises identical bits for the same toolkit version, architecture and SM count, and the toolkit's
    # libraries ship inside the image: the driver alone does not decide the bits. Its CUDA version is a requirement
    # (at least the image's CUDA major), checked before a run or replay starts (envkit.run.gpus).
    "gpus.driver_version": FieldClass(False, "the CUDA libraries ship in the image; same toolkit, architecture and "
                                             "SM count give the same bits"),
    "gpus.cuda_driver_version": FieldClass(False, "a requirement (at least the image's CUDA major), checked before "
                                                  "the job starts"),
    "gpus.devices": FieldClass(False, "compared device by device below"),
    "gpus.devices[].index": FieldClass(False, "positions are compared through the fields below"),
    "gpus.devices[].name": FieldClass(True, "cuBLAS and cuDNN pick algorithms per GPU model"),
    "gpus.devices[].compute_capability": FieldClass(True, "kernels are compiled and chosen per compute capability"),
    "gpus.devices[].sm_count": FieldClass(True, "cuBLAS splits work by the number of SMs"),
    "gpus.devices[].mig_mode": FieldClass(True, "a MIG slice has a fraction of the SMs and reports its parent's name"),
    "gpus.devices[].mig_profile": FieldClass(True, "a MIG slice's share of the GPU (its SM count)"),
    "gpus.devices[].parent_uuid": FieldClass(False, "names one card; cards of one model compute alike"),
    "gpus.devices[].uuid": FieldClass(False, "names one card; cards of one model compute alike"),
    "gpus.devices[].memory_bytes": FieldClass(False, f"memory size {_NOT_ARITHMETIC}"),
    "gpus.devices[].mig_devices": FieldClass(True, "the MIG slices a job given the whole card can use"),
    "gpus.devices[].mig_devices[].index": FieldClass(False, "positions are compared through the fields below"),
    "gpus.devices[].mig_devices[].uuid": FieldClass(False, "names one slice"),
    "gpus.devices[].mig_devices[].memory_bytes": FieldClass(False, f"memory size {_NOT_ARITHMETIC}"),
    "gpus.devices[].mig_devices[].name": FieldClass(True, "the slice's profile"),
    "gpus.devices[].mig_devices[].sm_count": FieldClass(True, "cuBLAS splits work by the number of SMs"),
    "gpus.devices[].mig_devices[].gpu_slices": FieldClass(True, "the slice's share of the GPU"),
    "gpus.devices[].errors.*": _DIAGNOSTIC,
    "gpus.errors.*": _DIAGNOSTIC,
    "container.schema_version": FieldClass(False, "the probe's format, not the software"),
    "container.python.version": FieldClass(True, "the interpreter's math and hashing can change between versions"),
    "container.python.implementation": FieldClass(True, "another interpreter"),
    "container.python.executable": FieldClass(False, "a path"),
    "container.torch.*": FieldClass(True, "torch and its CUDA runtime, cuDNN, NCCL, MKL and oneDNN versions and "
                                          "ATen's CPU capability choose the kernels"),
    "container.numpy.*": FieldClass(True, "numpy and its BLAS choose the kernels"),
    "container.threads.*": FieldClass(True, "reductions split over another number of threads sum in another order"),
    "container.threads.cpu_count": FieldClass(False, "the run pins its thread counts"),
    "container.threads.affinity": FieldClass(False, "the run pins its thread counts"),
    "container.env.*": FieldClass(True, "these variables steer kernel dispatch, threads or TF32"),
    "container.job.*": FieldClass(True, "what the job itself had in effect (ATen capability, threads, torch flags)"),
    "container.error": _DIAGNOSTIC,
    "container.errors.*": _DIAGNOSTIC,
}
_UNCLASSIFIED = FieldClass(True, "not classified; treated as changing numerics to be safe")
_INDEX = re.compile(r"\[\d+\]")


def classify_fields(cpu_profile: str = "native") -> dict[str, FieldClass]:
    """The classification table for a CPU profile: field path (``[]`` for list positions, ``.*`` for a whole
    section) -> class."""
    table = dict(FIELD_CLASSES)
    for path in cpuprofile.CPU_FIELDS:
        table[path] = classify(path, cpu_profile)
    return table


def classify(path: str, cpu_profile: str = "native") -> FieldClass:
    """Whether a difference in the field at ``path`` (``gpus.devices[0].name``) changes numerics, and why.

    Args:
        path: the field's dotted path.
        cpu_profile: the run's CPU profile, which decides the CPU fields (:func:`envkit.cpuprofile.classify_cpu_field`).
    """
    generic = _INDEX.sub("[]", path)
    cpu = cpuprofile.classify_cpu_field(generic, cpu_profile)
    if cpu is not None:
        return FieldClass(*cpu)
    parts = generic.split(".")
    for k in range(len(parts), 0, -1):
        key = ".".join(parts[:k]) + ("" if k == len(parts) else ".*")
        if key in FIELD_CLASSES:
            return FIELD_CLASSES[key]
    return _UNCLASSIFIED


@dataclass(frozen=True)
class FieldDiff:
    path: str
    recorded: Any
    current: Any
    changes_numerics: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "recorded": self.recorded, "current": self.current,
                "changes_numerics": self.changes_numerics, "why": self.why}


def compare_fingerprints(recorded: Mapping[str, Any], current: Mapping[str, Any],
                         cpu_profile: str = "native") -> list[FieldDiff]:
    """Every field that differs between two fingerprints, with whether the difference changes numerics.

    A field present on one side only (a probe that failed, a section not taken) is a difference too: its value on
    the other side is ``None``. Instruction-set flags are compared as sets, and the ``why`` names the flags found on
    one side only.

    Raises:
        ValueError: an unknown ``cpu_profile``.
    """
    if cpu_profile not in CPU_PROFILES:
        raise ValueError(f"unknown cpu profile {cpu_profile!r}; expected one of {', '.join(CPU_PROFILES)}")
    old, new = _flatten(recorded), _flatten(current)
    diffs = []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        cls = classify(path, cpu_profile)
        why = cls.why
        if isinstance(a, list) and isinstance(b, list):
            only_a, only_b = sorted(set(map(str, a)) - set(map(str, b))), sorted(set(map(str, b)) - set(map(str, a)))
            if not only_a and not only_b:
                continue  # same set in another order
            why = "; ".join(filter(None, [only_a and f"only recorded: {' '.join(only_a)}",
                                           only_b and f"only current: {' '.join(only_b)}"])) + f" ({cls.why})"
        elif a is None or b is None:
            why = f"{'recorded' if a is None else 'current'} host has no value ({cls.why})"
        diffs.append(FieldDiff(path, a, b, cls.changes_numerics, why))
    return diffs


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted path; lists of objects become ``name[i].field``, other lists stay leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, path))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(_flatten(item, f"{path}[{i}]"))
        else:
            out[path] = value
    return out
