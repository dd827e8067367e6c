"""Reading a GPU host: NVML (through a stand-in answering as the recorded hosts would) and the nvidia-smi fallback
(a stand-in script on PATH answering with nvidia-smi's output formats). No GPU needed.
"""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path

import pytest

from envkit.fingerprint import gpu_section

from .gpu_hosts import gpu_host


class NvmlError(Exception):
    pass


def fake_nvml(host: dict) -> types.ModuleType:
    """A pynvml module answering from a recorded host's GPU section (as NVML would: MIG calls NotSupported on a GPU
    without MIG, NotFound for empty MIG slots)."""
    m = types.ModuleType("pynvml")
    devices = host["devices"]
    handles: dict[int, dict] = {}

    def handle(obj: dict) -> int:
        handles[id(obj)] = obj
        return id(obj)

    m.nvmlInit = lambda: None
    m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlSystemGetDriverVersion = lambda: host["driver_version"].encode()  # old bindings return bytes
    major, minor = host["cuda_driver_version"].split(".")
    m.nvmlSystemGetCudaDriverVersion_v2 = lambda: int(major) * 1000 + int(minor) * 10
    m.nvmlDeviceGetHandleByIndex = lambda i: handle(devices[i])
    m.nvmlDeviceGetName = lambda h: handles[h]["name"]
    m.nvmlDeviceGetUUID = lambda h: handles[h]["uuid"]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: tuple(int(x) for x in handles[h]["compute_capability"].split("."))
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=handles[h]["memory_bytes"])

    def mig_mode(h):
        if handles[h].get("mig_mode") is None:
            raise NvmlError("Not Supported")
        return [1 if handles[h]["mig_mode"] == "enabled" else 0, 0]

    def mig_handle(h, slot):
        migs = handles[h].get("mig_devices") or []
        if slot >= len(migs):
            raise NvmlError("Not Found")
        return handle(migs[slot])

    m.nvmlDeviceGetMigMode = mig_mode
    m.nvmlDeviceGetMaxMigDeviceCount = lambda h: 7
    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    m.nvmlDeviceGetAttributes = lambda h: types.SimpleNamespace(multiprocessorCount=handles[h]["sm_count"],
                                                                gpuInstanceSliceCount=handles[h]["gpu_slices"])
    return m


@pytest.mark.parametrize("name", ["h100x8", "h100x1", "mig", "driver550"])
def test_nvml_reads_what_the_recorded_hosts_hold(monkeypatch, name):
    host = gpu_host(name)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(host))
    assert gpu_section() == host


SMI = r"""#!/bin/sh
# nvidia-smi as driver 550 prints it, for an H100 in MIG mode and a plain one
case "$1" in
  --query-gpu=*)
    printf '0, NVIDIA H100 80GB HBM3, GPU-c4e9a1b2-7d3f-4e5a-8b6c-9d0e1f2a3b4c, 9.0, 81559, 550.54.15, Enabled\n'
    printf '1, NVIDIA H100 80GB HBM3, GPU-b72c04d1-5e36-4a8b-9f21-0d3e4c5b6a71, 9.0, 81559, 550.54.15, Disabled\n' ;;
  -L)
    printf 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-c4e9a1b2-7d3f-4e5a-8b6c-9d0e1f2a3b4c)\n'
    printf '  MIG 1g.10gb     Device  0: (UUID: MIG-6f2e3d4c-5b6a-5798-0a1b-2c3d4e5f6a7b)\n'
    printf 'GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-b72c04d1-5e36-4a8b-9f21-0d3e4c5b6a71)\n' ;;
  *)
    printf '| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |\n' ;;
esac
"""


def smi_on_path(tmp_path: Path, monkeypatch, script: str) -> None:
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(script)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # the bindings cannot be imported


def test_without_the_bindings_nvidia_smi_answers(tmp_path, monkeypatch):
    smi_on_path(tmp_path, monkeypatch, SMI)
    section = gpu_section()
    assert (section["source"], section["driver_version"], section["cuda_driver_version"], section["count"]) == (
        "nvidia-smi", "550.54.15", "12.4", 2)
    first, second = section["devices"]
    assert (first["name"], first["compute_capability"], first["memory_bytes"], first["mig_mode"]) == (
        "NVIDIA H100 80GB HBM3", "9.0", 81559 * 2**20, "enabled")
    assert first["mig_devices"][0]["index"] == "0:0" and first["mig_devices"][0]["uuid"].startswith("MIG-6f2e")
    assert second["mig_mode"] == "disabled" and "mig_devices" not in second


def test_a_failing_nvidia_smi_is_a_reason_not_an_error(tmp_path, monkeypatch):
    smi_on_path(tmp_path, monkeypatch, "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with "
                                       "the NVIDIA driver.' >&2\nexit 9\n")
    section = gpu_section()
    assert section["available"] is False and "could not communicate" in section["reason"]


def test_neither_bindings_nor_nvidia_smi_means_no_gpu(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", str(tmp_path))
    section = gpu_section()
    assert section == {"available": False, "reason": "nvidia-ml-py is not installed, and nvidia-smi is not on PATH: "
                                                     "no NVIDIA driver seen"}


def test_nvidia_ml_py_is_a_core_dependency_and_pure_python():
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert any(d.startswith("nvidia-ml-py") for d in project["dependencies"])
    import pynvml

    assert pynvml.__file__.endswith(".py")  # ctypes over the driver's library: nothing compiled to install
