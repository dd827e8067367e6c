"""Container settings on the real engine: the /dev/shm a job gets by default and on request, --ipc host, the NCCL
ulimits, --gpus none hiding the GPUs of a default nvidia runtime, a DataLoader with 2 workers and 32 MB batches under
the defaults, and `envkit run --gpus 1` on a host without GPUs: one line, envkit's exit code, a failed record.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import GpuError

from .conftest import envkit

pytestmark = pytest.mark.docker

SHM = """
import json, os, resource
st = os.statvfs("/dev/shm")
print(json.dumps({"shm": st.f_frsize * st.f_blocks, "nvidia": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                  "uid": os.getuid(), "memlock": resource.getrlimit(resource.RLIMIT_MEMLOCK)}))
"""


def run_json(*args, cwd: Path) -> dict:
    r = envkit(*args, cwd=cwd)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _stdout(project: Path, run_id: str) -> str:
    from envkit.store.filestore import FileStore

    return FileStore(project / ".envkit").layout(run_id).stdout_log.read_text()


def record(project: Path, run_id: str) -> dict:
    from envkit.store.filestore import FileStore

    return FileStore(project / ".envkit").read(run_id).to_dict()


@pytest.fixture()
def shm_project(tmp_path) -> Path:
    (tmp_path / "shm.py").write_text(SHM)
    return tmp_path


def test_the_default_shm_is_half_the_memory_and_recorded(shm_project, tiny_image):
    out = run_json("run", "--seed", "1", "--image", tiny_image, "--memory", "1g", "--json", "shm.py",
                   cwd=shm_project)
    seen = json.loads(_stdout(shm_project, out["run_id"]))
    assert out["shm_size"] == "512m" and seen["shm"] == 512 * 2**20  # Docker's own default would be 64 MB
    assert seen["nvidia"] == "void"  # --gpus none: no GPU even under a default nvidia runtime
    rec = record(shm_project, out["run_id"])
    assert (rec["shm_size"], rec["ipc"], rec["gpus"], rec["ulimits"]) == ("512m", "private", "none", {})


def test_shm_size_and_ipc_host_on_request(shm_project, tiny_image):
    out = run_json("run", "--seed", "1", "--image", tiny_image, "--shm-size", "200m", "--json", "shm.py",
                   cwd=shm_project)
    assert json.loads(_stdout(shm_project, out["run_id"]))["shm"] == 200 * 2**20
    host = run_json("run", "--seed", "1", "--image", tiny_image, "--ipc", "host", "--json", "shm.py", cwd=shm_project)
    st = shutil.disk_usage("/dev/shm")
    assert json.loads(_stdout(shm_project, host["run_id"]))["shm"] == st.total  # the host's own /dev/shm
    assert record(shm_project, host["run_id"])["shm_size"] is None
    replayed = envkit("replay", host["run_id"], "--json", cwd=shm_project)
    assert replayed.returncode == 0, replayed.stderr


def test_nccls_ulimits_reach_the_container_or_the_engine_refuses_them_as_envkit_expects(tiny_image):
    from envkit.engine import ContainerSpec, connect
    from envkit.errors import JobError
    from envkit.run.container import without_ulimits
    from envkit.settings import GPU_ULIMITS

    spec = ContainerSpec(image=tiny_image, command=["python3", "-c", "import resource as r; print(r.getrlimit("
                                                    "r.RLIMIT_MEMLOCK), r.getrlimit(r.RLIMIT_STACK))"],
                         ulimits=dict(GPU_ULIMITS), labels={"io.envkit.test": "1"})
    try:
        out = connect().run_output(spec).decode().strip()
    except JobError as exc:
        # An engine without CAP_SYS_RESOURCE (rootless, sandboxed: this CI host's) may not raise memlock: the
        # executor recognises the refusal and runs the job with the engine's own limits (noted in the record).
        assert "rlimit" in exc.message and without_ulimits(spec, exc.message) is not None
        assert "ulimits" in (exc.hint or "")
        return
    assert out == f"(-1, -1) ({64 * 2**20}, {64 * 2**20})"


def test_gpus_1_on_a_host_without_gpus_is_one_line_and_a_failed_record(shm_project, tiny_image):
    if shutil.which("nvidia-smi"):
        pytest.skip("this host has an NVIDIA driver")
    r = envkit("run", "--seed", "1", "--image", tiny_image, "--gpus", "1", "shm.py", cwd=shm_project)
    assert r.returncode == 125, r.stderr  # envkit run's own failure, as docker run's
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: --gpus 1, and this host has no usable NVIDIA GPU") and len(lines) == 2
    assert lines[1].startswith("hint: ")
    runs = json.loads(envkit("runs", "--json", cwd=shm_project).stdout)
    assert [row["status"] for row in runs] == ["failed"]
    j = envkit("run", "--seed", "1", "--image", tiny_image, "--gpus", "1", "--json", "shm.py", cwd=shm_project)
    assert j.returncode == 125 and json.loads(j.stdout)["error"]["code"] == GpuError.exit_code  # who failed, and why


LOADER = """
import hashlib, torch
from torch.utils.data import DataLoader, Dataset

class Big(Dataset):  # 8 batches of 32 MB, handed from 2 workers through /dev/shm
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.full((8 * 2**20,), float(i))

if __name__ == "__main__":
    h = hashlib.sha256()
    for batch in DataLoader(Big(), batch_size=1, num_workers=2):
        h.update(batch.numpy().tobytes()[:64])
    open("digest.txt", "w").write(h.hexdigest())
    print("ok")
"""


@pytest.mark.slow  # starts torch with DataLoader workers in the CPU image
def test_a_dataloader_with_2_workers_and_32_mb_batches_runs_with_the_defaults(tmp_path, cpu_image):
    (tmp_path / "loader.py").write_text(LOADER)
    out = run_json("run", "--seed", "1", "--image", cpu_image, "--json", "loader.py", cwd=tmp_path)
    assert out["status"] == "succeeded" and out["exit_code"] == 0
    assert [o["path"] for o in out["outputs"]] == ["digest.txt"]
    docker_default = envkit("run", "--seed", "1", "--image", cpu_image, "--shm-size", "64m", "loader.py", cwd=tmp_path)
    assert docker_default.returncode != 0 and "shared memory" in docker_default.stderr  # what the default prevents
