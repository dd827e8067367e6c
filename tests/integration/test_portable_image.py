"""The portable CPU profile through envkit itself: the reference training run by `envkit run` on this CPU, and the
same job (the record's environment, the same image, the bootstrap and its portable ops active) run on an emulated
Intel Haswell with `qemu-x86_64-static -cpu Haswell` inside the container. Identical bits under portable, other
bits under native. Then the replay's platform check: another vendor and instruction sets refuse a native run's
replay but not a portable one's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from envkit.errors import PlatformMismatchError
from envkit.store.filestore import FileStore

from .conftest import ROOT, envkit

pytestmark = [pytest.mark.docker, pytest.mark.slow]
QEMU = shutil.which("qemu-x86_64-static")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="needs qemu-x86_64-static (apt-get install qemu-user-static)")


def run_here(project: Path, lock: Path, profile: str) -> dict:
    r = envkit("run", "--seed", "0", "--lock", str(lock), "--cpu-profile", profile, "--trace", "off", "--json",
               "portable_train.py", "weights.pt", cwd=project, timeout=1800)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def run_emulated(project: Path, run: dict, tmp: Path) -> str:
    """The recorded job on an emulated Haswell: same image, same environment, same code. Returns the weights' sha."""
    record = json.loads((project / ".envkit" / "runs" / run["run_id"] / "record.json").read_text())
    work, meta = tmp / "work", tmp / "meta"
    shutil.copytree(project / ".envkit" / "runs" / run["run_id"] / "code", work)
    meta.mkdir()
    env_args = [a for k, v in record["environment"].items() for a in ("-e", f"{k}={v}")]
    cmd = ["docker", "run", "--rm", "--network", "none", "--label", "io.envkit.test=1", *env_args,
           "-v", f"{QEMU}:/usr/local/bin/qemu-x86_64-static:ro", "-v", f"{work}:/work", "-v", f"{meta}:/envkit/meta",
           "-w", "/work", record["image"]["id"], "qemu-x86_64-static", "-cpu", "Haswell",
           "/opt/envkit/venv/bin/python", "portable_train.py", "weights.pt"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(next(meta.glob("bootstrap-*.json")).read_text())
    assert report["cpu_capability"] == ("AVX2" if record["cpu_profile"] == "portable" else report["cpu_capability"])
    if record["cpu_profile"] == "portable":
        assert "portable_ops" in report["extensions"]
    return hashlib.sha256((work / "weights.pt").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def project(session_dir) -> Path:
    p = session_dir / "portable-project"
    p.mkdir()
    shutil.copy(ROOT / "examples" / "portable_train.py", p)
    return p


@needs_qemu
def test_portable_gives_the_same_bits_on_an_emulated_haswell(project, cpu_lock, tmp_path):
    run = run_here(project, cpu_lock, "portable")
    [out] = run["outputs"]
    assert run_emulated(project, run, tmp_path) == out["sha256"]


@needs_qemu
def test_native_gives_other_bits_on_an_emulated_haswell(project, cpu_lock, cpu_image, tmp_path):
    run = run_here(project, cpu_lock, "native")
    [out] = run["outputs"]
    assert run_emulated(project, run, tmp_path) != out["sha256"]


@pytest.mark.parametrize("profile, refused", [("native", True), ("portable", False)])
def test_replay_check_treats_cpu_models_by_profile(project, cpu_lock, cpu_image, profile, refused):
    """A run recorded on another vendor's CPU with other instruction sets: a native replay here is refused, a
    portable one is not. The recorded host differs from this one by construction, whatever this CPU is."""
    run_id = run_here(project, cpu_lock, profile)["run_id"]
    store = FileStore(project / ".envkit")
    rec = store.read(run_id)
    host = rec.fingerprint.host
    host["cpu_vendor"] = "AuthenticAMD" if host["cpu_vendor"] == "GenuineIntel" else "GenuineIntel"
    flags = host["cpu_flags"]
    has_avx512 = any(f.startswith("avx512") for f in flags)
    host["cpu_flags"] = [f for f in flags if not f.startswith("avx512")] if has_avx512 else [*flags, "avx512f"]
    store.write(rec)
    r = envkit("replay", run_id, "--json", cwd=project, timeout=1800)
    if refused:
        assert r.returncode == PlatformMismatchError.exit_code
        assert "host.cpu_flags" in r.stderr and "host.cpu_vendor" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["verdict"]["kind"] == "IDENTICAL"
