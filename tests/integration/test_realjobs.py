"""Real training jobs on the real engine (issue 14): `envkit run -- COMMAND` with torchrun DDP and `python -m`, a
DataLoader moving 32 MB batches through shared memory, a two-stage pipeline with its lineage replayed `--upstream`,
a job whose only output is what it prints, `envkit run train.py` from the project configuration alone, and exit
codes that tell envkit's failures from the job's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from envkit.errors import EXIT_COMMAND_NOT_FOUND, EXIT_DIVERGED

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker

DDP = ROOT / "tests" / "unit" / "bootstrap" / "jobs" / "ddp.py"


def run_json(*args: str, cwd: Path, code: int = 0) -> dict:
    r = envkit(*args, cwd=cwd)
    assert r.returncode == code, r.stderr[-3000:]
    return json.loads(r.stdout)


def record(project: Path, run_id: str) -> dict:
    return json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())


@pytest.mark.slow  # three torch DDP jobs: about two minutes on two cores
def test_torchrun_ddp_on_cpu_repeats_and_replays_identical(tmp_path, cpu_lock, cpu_image):
    shutil.copy(DDP, tmp_path / "ddp.py")
    command = ["--", "torchrun", "--standalone", "--nproc-per-node", "2", "ddp.py", "."]
    runs = [run_json("run", "--seed", "41", "--lock", str(cpu_lock), "--json", *command, cwd=tmp_path)
            for _ in range(2)]
    outputs = [{o["path"]: o["sha256"] for o in r["outputs"]} for r in runs]
    assert set(outputs[0]) == {"rank0.json", "rank1.json"} and outputs[0] == outputs[1]
    rec = record(tmp_path, runs[0]["run_id"])
    assert rec["argv"] == command[1:] and rec["script"] is None
    assert rec["world_size"] == 2 and rec["processes"] >= 3  # the launcher, two ranks (and their workers)
    streams = {b["role"]: b["stream"] for b in rec["bootstrap"]}
    assert streams["rank 0"] == "rank/0" and streams["rank 1"] == "rank/1"  # rank-aware derived seeds
    assert {"dataloader worker 0 of rank 0", "dataloader worker 0 of rank 1"} <= set(streams)
    rank0 = json.loads((tmp_path / ".envkit" / "runs" / rec["run_id"] / "work" / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / ".envkit" / "runs" / rec["run_id"] / "work" / "rank1.json").read_text())
    assert rank0["final"] == rank1["final"] and rank0["batches"] != rank1["batches"]
    r = envkit("replay", runs[0]["run_id"][:15], "--json", cwd=tmp_path)  # a unique prefix of the id
    assert r.returncode == 0, r.stderr[-3000:]
    verdict = json.loads(r.stdout)["verdict"]
    assert verdict["kind"] == "IDENTICAL" and verdict["files_compared"] == 2


def test_python_dash_m_a_package_module_runs_and_replays(tmp_path, tiny_image):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(
        "import random, sys\n"
        "steps = int(sys.argv[sys.argv.index('--steps') + 1])\n"
        "open('weights.txt', 'w').write(repr([random.random() for _ in range(steps)]))\n")
    out = run_json("run", "--seed", "5", "--image", tiny_image, "--json", "--", "python", "-m", "pkg.train",
                   "--steps", "3", cwd=tmp_path)
    assert out["status"] == "succeeded" and out["argv"] == ["python", "-m", "pkg.train", "--steps", "3"]
    assert [o["path"] for o in out["outputs"]] == ["weights.txt"] and out["processes"] == 1
    r = envkit("replay", "last", cwd=tmp_path)
    assert r.returncode == 0 and "IDENTICAL" in r.stdout and "compared 1 output file" in r.stdout


LOADER = """\
import torch
from torch.utils.data import DataLoader, Dataset

class Big(Dataset):
    def __len__(self):
        return 6
    def __getitem__(self, i):
        return torch.full((8 * 1024 * 1024,), float(i))  # 32 MB of float32 per batch

if __name__ == "__main__":
    sums = [float(b.sum()) for b in DataLoader(Big(), batch_size=1, num_workers=2)]
    open("sums.txt", "w").write(repr(sums))
    print("batches", len(sums))
"""


def test_a_dataloader_with_two_workers_and_32mb_batches_runs_with_the_defaults(tmp_path, cpu_lock, cpu_image):
    """Docker's own /dev/shm is 64 MB: two workers each holding two 32 MB batches in shared memory die with a bus
    error there. envkit's default shared memory must fit them."""
    (tmp_path / "loader.py").write_text(LOADER)
    r = envkit("run", "--seed", "1", "--lock", str(cpu_lock), "--json", "loader.py", cwd=tmp_path)
    out = json.loads(r.stdout)
    job_stderr = (tmp_path / ".envkit" / "runs" / out["run_id"] / "stderr.log").read_text(errors="replace")
    assert r.returncode == 0, job_stderr[-2000:]  # "unable to allocate shared memory(shm)" / "Bus error" at 64 MB
    assert out["status"] == "succeeded" and [o["path"] for o in out["outputs"]] == ["sums.txt"]


STAGE1 = "import os, random\nos.makedirs('out', exist_ok=True)\nopen('out/data.txt', 'w').write(repr(random.random()))\n"
STAGE2 = "import random\nopen('result.txt', 'w').write(open('out/data.txt').read() + ' ' + repr(random.random()))\n"


def test_a_two_stage_pipeline_records_its_lineage_and_replays_upstream(tmp_path, tiny_image):
    (tmp_path / "stage1.py").write_text(STAGE1)
    (tmp_path / "stage2.py").write_text(STAGE2)
    first = run_json("run", "--seed", "3", "--image", tiny_image, "--json", "stage1.py", cwd=tmp_path)
    second = run_json("run", "--seed", "3", "--image", tiny_image, "--input", "last:out/data.txt", "--json",
                      "stage2.py", cwd=tmp_path)
    data = next(o for o in first["outputs"] if o["path"] == "out/data.txt")
    assert second["upstream"] == [{"run_id": first["run_id"], "path": "out/data.txt", "target": "/work/out/data.txt",
                                   "sha256": data["sha256"], "size": data["size"]}]
    assert [o["path"] for o in second["outputs"]] == ["result.txt"]  # the mount point is not an output
    rec = record(tmp_path, second["run_id"])
    assert rec["inputs"] == [{"path": "/work/out/data.txt", "size": data["size"], "sha256": data["sha256"]}]
    shown = envkit("show", second["run_id"][-8:], cwd=tmp_path)  # the hex part alone names it too
    assert shown.returncode == 0 and f"upstream     {first['run_id']}" in shown.stdout
    r = envkit("replay", second["run_id"], "--upstream", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    verdicts = [line for line in r.stdout.splitlines() if line.startswith("replay ")]
    assert len(verdicts) == 2 and all(v.endswith("IDENTICAL") for v in verdicts)
    assert verdicts[0].endswith(f"of {first['run_id']}: IDENTICAL")
    assert verdicts[1].endswith(f"of {second['run_id']}: IDENTICAL")
    # The input is checked on replay: an upstream output changed by hand is refused, exit 41.
    (tmp_path / ".envkit" / "runs" / first["run_id"] / "work" / "out" / "data.txt").write_text("0.5")
    r = envkit("replay", second["run_id"], cwd=tmp_path)
    assert r.returncode == 41 and "changed since the run recorded it" in r.stderr


def test_a_job_that_prints_urandom_and_writes_no_file_replays_diverged(tmp_path, tiny_image):
    (tmp_path / "noise.py").write_text("import os\nprint('start')\nprint('noise', os.urandom(8).hex())\n")
    run_json("run", "--seed", "1", "--image", tiny_image, "--json", "noise.py", cwd=tmp_path)
    r = envkit("replay", "last", cwd=tmp_path)
    assert r.returncode == EXIT_DIVERGED, r.stderr[-3000:]
    assert ": DIVERGED" in r.stdout and "stdout line 2 differs" in r.stdout and "original: noise " in r.stdout
    (tmp_path / "quiet.py").write_text("x = 1\n")
    run_json("run", "--seed", "1", "--image", tiny_image, "--json", "quiet.py", cwd=tmp_path)
    r = envkit("replay", "last", cwd=tmp_path)
    assert r.returncode == 5 and ": UNVERIFIED" in r.stdout and "nothing compared" in r.stdout


def test_envkit_run_train_py_with_only_the_project_configuration(tmp_path, tiny_lock, tiny_image):
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "demo"\n\n[tool.envkit]\nlock = "{tiny_lock}"\n'
                                             'seed = 11\nignore = ["*.ckpt"]\n')
    (tmp_path / "train.py").write_text("import random\nopen('w.txt', 'w').write(repr(random.random()))\n")
    (tmp_path / "old.ckpt").write_text("not for the snapshot")
    (tmp_path / "src").mkdir()
    r = envkit("run", "train.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = record(tmp_path, r.stdout.strip().splitlines()[-1])
    assert rec["seed"] == 11 and rec["lock"]["name"] == "tiny" and rec["image"]["id"] == tiny_image
    assert [f["path"] for f in rec["code"]["files"]] == ["pyproject.toml", "train.py"]
    r = envkit("show", "last", "--json", cwd=tmp_path / "src")  # any subfolder finds the project's store
    assert r.returncode == 0 and json.loads(r.stdout)["run_id"] == rec["run_id"]


def test_a_jobs_exit_code_is_told_apart_from_envkits_own(tmp_path, tiny_image):
    out = run_json("run", "--seed", "1", "--image", tiny_image, "--json", "--", "python", "-c",
                   "import sys; sys.exit(34)", cwd=tmp_path, code=34)
    assert out["failed_by"] == "job" and out["exit_code"] == 34
    out = run_json("run", "--seed", "1", "--image", tiny_image, "--json", "--", "no-such-command", cwd=tmp_path,
                   code=EXIT_COMMAND_NOT_FOUND)
    assert out["failed_by"] == "envkit" and out["error"]["type"] == "JobError" and out["error"]["code"] == 34
    assert record(tmp_path, out["run_id"])["status"] == "failed"
