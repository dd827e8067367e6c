"""The host fingerprint (probed on this machine), the in-container probe script, and which differences matter."""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import envkit.injob.probe
from envkit.cli import main
from envkit.fingerprint import (
    FIELD_CLASSES,
    SCHEMA_VERSION,
    _cpuinfo,
    classify,
    classify_fields,
    compare_fingerprints,
    engine_section,
    gpu_section,
    host_fingerprint,
)

PROBE = Path(envkit.injob.probe.__file__)


def cpuinfo_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc")
def test_host_section_describes_this_machine() -> None:
    fp = host_fingerprint()
    assert fp["schema_version"] == SCHEMA_VERSION and "engine" not in fp
    host = fp["host"]
    assert host["errors"] == {}
    assert host["arch"] == platform.machine()
    assert host["logical_cores"] == os.cpu_count()
    assert host["hostname"] == socket.gethostname()
    assert host["kernel"] == platform.release()
    assert host["memory_bytes"] > 2**28
    flags = cpuinfo_flags()
    assert set(host["cpu_flags"]) <= flags
    for flag in ("avx", "avx2", "fma", "avx512f", "asimd"):
        assert (flag in host["cpu_flags"]) == (flag in flags)
    assert not {"smep", "sse", "aes", "ht"} & set(host["cpu_flags"])  # not numerics-relevant


def test_cpuinfo_of_an_arm_host(tmp_path: Path) -> None:
    sample = tmp_path / "cpuinfo"
    sample.write_text(
        "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
        "asimdhp cpuid asimdrdm lrcpc dcpop asimddp sve i8mm bf16\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n\n"
        "processor\t: 1\nFeatures\t: fp\n")
    info = _cpuinfo(str(sample))
    assert info["vendor"] == "0x41"
    assert info["flags"] == ["asimd", "asimddp", "asimdhp", "asimdrdm", "bf16", "fphp", "i8mm", "sve"]


def test_gpus_absent_is_a_value_not_an_error() -> None:
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has an NVIDIA driver; see test_gpus_match_nvidia_smi")
    gpus = gpu_section()
    assert gpus["available"] is False and gpus["reason"]


@pytest.mark.gpu
def test_gpus_match_nvidia_smi() -> None:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,uuid,driver_version,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    gpus = gpu_section()
    assert gpus["available"] is True and gpus["count"] == len(rows)
    assert gpus["driver_version"] == rows[0][2]
    assert [[d["name"], d["uuid"], d["compute_capability"]] for d in gpus["devices"]] == [
        [r[0], r[1], r[3]] for r in rows]


def test_engine_that_does_not_answer_is_recorded_not_raised() -> None:
    from envkit.engine.docker import DockerEngine
    from envkit.engine.dockerapi import DockerApi, endpoint_from_env

    api = DockerApi(endpoint_from_env({"DOCKER_HOST": "unix:///nonexistent/docker.sock"}), "1.41", timeout=5)
    section = engine_section(DockerEngine(api))
    assert list(section) == ["error"] and "engine" in section["error"]


# --- the in-container probe ----------------------------------------------------------------------------------------
def run_probe(*args: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run([sys.executable, *args, str(PROBE)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # stdout is the JSON and nothing else


@pytest.mark.slow  # imports torch in a fresh interpreter
def test_probe_reports_torch_and_numpy() -> None:
    torch = pytest.importorskip("torch")
    numpy = pytest.importorskip("numpy")
    report = run_probe(env={"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default"})
    assert report["python"]["version"] == platform.python_version()
    t = report["torch"]
    assert t["version"] == torch.__version__ and t["git_version"] == torch.version.git_version
    assert t["cuda"] == torch.version.cuda
    assert t["cpu_capability"] == "DEFAULT"  # the capability in effect, not the best the CPU has
    if torch.backends.mkldnn.is_available():
        assert t["onednn"] and t["onednn"][0].isdigit()
    assert report["threads"]["torch"] == 1
    assert report["env"]["ATEN_CPU_CAPABILITY"] == "default"
    assert report["numpy"]["version"] == numpy.__version__
    assert report["errors"] == {}


def test_probe_without_libraries_and_with_a_broken_one(tmp_path: Path) -> None:
    # A torch that prints on import and then fails: stdout must stay pure JSON, the failure a reported value.
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("print('banner from torch')\nraise RuntimeError('broken')\n")
    report = run_probe("-S", env={"PYTHONPATH": str(tmp_path)})  # -S: no site-packages, so no real numpy either
    assert report["torch"] == {"available": False, "reason": "import failed"}
    assert "broken" in report["errors"]["torch"]
    assert report["numpy"] == {"available": False, "reason": "not installed"}
    assert report["threads"]["torch"] is None


# --- comparing fingerprints ----------------------------------------------------------------------------------------
BASE = {
    "schema_version": 1,
    "host": {"arch": "x86_64", "cpu_vendor": "GenuineIntel", "cpu_model": "Xeon 8480", "cpu_flags": ["avx", "avx2",
             "avx512f", "fma"], "logical_cores": 64, "memory_bytes": 2**40, "kernel": "6.1.0-13", "os": "Debian 12",
             "hostname": "a", "errors": {}},
    "engine": {"version": "24.0.7", "storage_driver": "overlay2"},
    "gpus": {"available": True, "driver_version": "550.54.15", "cuda_driver_version": "12.4", "count": 1,
             "devices": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "compute_capability": "9.0",
                          "memory_bytes": 85 * 2**30, "errors": {}}], "errors": {}},
    "container": {"torch": {"version": "2.3.1", "cpu_capability": "AVX512"},
                  "threads": {"torch": 1, "cpu_count": 64}},
}


def changed(path: str, value: object) -> dict:
    fp = copy.deepcopy(BASE)
    node = fp
    keys = path.replace("[0]", ".0").split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[keys[-1]] = value
    return fp


@pytest.mark.parametrize(("path", "value", "numerics"), [
    ("host.hostname", "b", False),
    ("host.memory_bytes", 2**39, False),
    ("host.kernel", "6.1.0-18", False),
    ("host.logical_cores", 8, False),
    ("host.cpu_model", "Xeon 8490", True),  # native: MKL and oneDNN block their loops by the CPU's caches
    ("host.cpu_vendor", "AuthenticAMD", True),
    ("host.arch", "aarch64", True),
    ("engine.version", "25.0", False),
    ("gpus.driver_version", "555.42", False),  # the CUDA libraries ship in the image
    ("gpus.cuda_driver_version", "12.5", False),  # a requirement, checked before the job starts
    ("gpus.devices[0].name", "NVIDIA A100-SXM4-80GB", True),
    ("gpus.devices[0].compute_capability", "8.0", True),
    ("gpus.devices[0].uuid", "GPU-2", False),
    ("gpus.devices[0].memory_bytes", 94 * 2**30, False),
    ("container.torch.version", "2.4.0", True),
    ("container.torch.cpu_capability", "AVX2", True),
    ("container.threads.torch", 4, True),
    ("container.threads.cpu_count", 8, False),
    ("host.new_probe", "x", True),  # unclassified: treated as changing numerics
])
def test_one_difference(path: str, value: object, numerics: bool) -> None:
    diffs = compare_fingerprints(BASE, changed(path, value))
    assert [(d.path, d.current, d.changes_numerics) for d in diffs] == [(path, value, numerics)]
    assert diffs[0].why


def test_identical_and_reordered_flags_do_not_differ() -> None:
    assert compare_fingerprints(BASE, copy.deepcopy(BASE)) == []
    assert compare_fingerprints(BASE, changed("host.cpu_flags", ["fma", "avx512f", "avx2", "avx"])) == []


def test_instruction_sets_depend_on_the_cpu_profile() -> None:
    other = changed("host.cpu_flags", ["avx", "avx2", "fma", "amx_tile"])
    (native,) = compare_fingerprints(BASE, other)
    assert native.changes_numerics and "only recorded: avx512f" in native.why and "only current: amx_tile" in native.why
    (portable,) = compare_fingerprints(BASE, other, cpu_profile="portable")
    assert not portable.changes_numerics
    vendor = changed("host.cpu_vendor", "AuthenticAMD")
    assert compare_fingerprints(BASE, vendor)[0].changes_numerics
    assert not compare_fingerprints(BASE, vendor, cpu_profile="portable")[0].changes_numerics
    model = changed("host.cpu_model", "EPYC 9654")
    assert not compare_fingerprints(BASE, model, cpu_profile="portable")[0].changes_numerics
    arch = changed("host.arch", "aarch64")
    assert compare_fingerprints(BASE, arch, cpu_profile="portable")[0].changes_numerics
    with pytest.raises(ValueError, match="cpu profile"):
        compare_fingerprints(BASE, BASE, cpu_profile="fast")


def test_missing_gpus_and_failed_probes_are_differences() -> None:
    no_gpu = copy.deepcopy(BASE)
    no_gpu["gpus"] = {"available": False, "reason": "NVML cannot start"}
    diffs = {d.path: d for d in compare_fingerprints(BASE, no_gpu)}
    assert diffs["gpus.available"].changes_numerics and diffs["gpus.devices[0].name"].changes_numerics
    assert not diffs["gpus.reason"].changes_numerics
    failed = changed("host.cpu_vendor", None)
    failed["host"]["errors"] = {"cpu": "PermissionError: /proc/cpuinfo"}
    by_path = {d.path: d for d in compare_fingerprints(BASE, failed)}
    assert by_path["host.cpu_vendor"].changes_numerics and "current host has no value" in by_path["host.cpu_vendor"].why
    assert not by_path["host.errors.cpu"].changes_numerics


def test_every_classified_field_resolves_to_its_entry() -> None:
    for profile in ("native", "portable"):
        for pattern, cls in classify_fields(profile).items():
            path = pattern.replace("[]", "[3]").replace(".*", ".some_field")
            assert classify(path, profile) == cls, pattern


def test_cpu_fields_have_one_source() -> None:
    """The CPU fields are classed by envkit.cpuprofile alone; the fingerprint's table does not repeat them."""
    from envkit.cpuprofile import CPU_FIELDS, numerics_fields

    assert not set(CPU_FIELDS) & set(FIELD_CLASSES)
    for path in CPU_FIELDS:
        assert classify(path, "native").changes_numerics is (path in numerics_fields("native"))
        assert classify(path, "portable").changes_numerics is (path in numerics_fields("portable"))


def test_real_fingerprint_compared_with_itself() -> None:
    fp = host_fingerprint()
    assert compare_fingerprints(fp, json.loads(json.dumps(fp))) == []


# --- the CLI -------------------------------------------------------------------------------------------------------
def test_cli_without_an_engine(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert main(["fingerprint", "--json"]) == 0
    out, err = capsys.readouterr()
    fp = json.loads(out)
    assert "engine" not in fp and fp["host"]["hostname"] == socket.gethostname()
    assert err.startswith("note:") and "not reachable" in err
    assert main(["fingerprint"]) == 0
    out, _ = capsys.readouterr()
    assert out.startswith("host\n") and "\ngpus\n" in out and "hostname" in out
