"""GPU runs on the real engine, for a GPU host (marked gpu and docker; benchmarks/gpu/check.sh runs them with the CUDA
image it has in ENVKIT_GPU_IMAGE): `envkit run --gpus 1` on a job that asserts CUDA and writes a CUDA tensor's digest,
its replay IDENTICAL; a `--gpus none` run on the same host and its replay; the record and probe of a GPU run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from .conftest import ROOT, envkit

pytestmark = [pytest.mark.docker, pytest.mark.gpu]
JOBS = ROOT / "benchmarks" / "gpu" / "jobs"


@pytest.fixture(scope="module")
def gpu_image() -> str:
    image = os.environ.get("ENVKIT_GPU_IMAGE")
    if not image:
        pytest.skip("set ENVKIT_GPU_IMAGE to a CUDA image envkit built (benchmarks/gpu/check.sh builds or loads one)")
    return image


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    shutil.copy(JOBS / "digest.py", tmp_path / "digest.py")
    return tmp_path


def run_json(*args: str, cwd: Path) -> dict:
    r = envkit(*args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_one_gpu_run_writes_a_cuda_digest_and_replays_identical(project, gpu_image):
    out = run_json("run", "--seed", "5", "--gpus", "1", "--image", gpu_image, "--json", "digest.py", "--expect", "cuda",
                   cwd=project)
    assert out["status"] == "succeeded" and out["gpus"] == "1"
    from envkit.store.filestore import FileStore

    record = FileStore(project / ".envkit").read(out["run_id"])
    gpus = record.fingerprint.gpus
    assert gpus["available"] and gpus["count"] == 1 and gpus["devices"][0]["index"] == 0
    torch = record.fingerprint.container["torch"]
    assert torch["cuda_available"] is True and torch["devices"][0]["sm_count"] > 0  # the probe saw the job's GPU
    main = next(r for r in record.bootstrap if r["role"] == "main")
    assert main["tf32_matmul"] is not None and main["nvidia_tf32_override"] is None
    replayed = run_json("replay", out["run_id"], "--json", cwd=project)
    assert replayed["verdict"]["kind"] == "IDENTICAL", replayed


def test_a_none_run_on_a_gpu_host_sees_no_gpu_and_replays_identical(project, gpu_image):
    out = run_json("run", "--seed", "5", "--gpus", "none", "--image", gpu_image, "--json", "digest.py", "--expect",
                   "cpu", cwd=project)
    assert out["status"] == "succeeded"
    replayed = run_json("replay", out["run_id"], "--json", cwd=project)
    assert replayed["verdict"]["kind"] == "IDENTICAL" and replayed["platform_mismatch"] is False


def test_doctor_runs_a_gpu_container():
    r = envkit("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)}
    assert checks["GPU containers"]["ok"], checks["GPU containers"]
