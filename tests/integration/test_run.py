"""envkit run on the real engine: a seeded training twice gives the same bytes, the record is complete, Ctrl-C and
memory kills are recorded, concurrent runs do not clash, and bad input gets one line and its exit code."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from envkit.errors import (
    EXIT_RUN_FAILED,
    EngineUnavailableError,
    InvalidRunIdError,
    RunNotFoundError,
)

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker


def read_record(project: Path, run_id: str) -> dict:
    return json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())


@pytest.fixture(scope="module")
def project(session_dir) -> Path:
    """A user's project folder: the example training and a data folder mounted read-only as an input."""
    p = session_dir / "project"
    p.mkdir()
    shutil.copy(ROOT / "examples" / "train.py", p / "train.py")
    (p / "data").mkdir()
    (p / "data" / "scale.txt").write_text("1.0\n")
    (p / ".gitignore").write_text("data/\n")
    return p


@pytest.fixture(scope="module")
def three_runs(project, cpu_lock, cpu_image):
    """seed 42 twice, seed 7 once; each with a mounted input and a secret in --env."""
    out = []
    for seed in (42, 42, 7):
        r = envkit("run", "--seed", str(seed), "--lock", str(cpu_lock), "--mount", f"{project / 'data'}:/data",
                   "--env", "WANDB_API_KEY=s3cret", "--json", "train.py", "--epochs", "2", cwd=project)
        assert r.returncode == 0, r.stderr
        out.append(json.loads(r.stdout))
    return out


def test_same_seed_same_bytes_other_seed_other_bytes(three_runs):
    a, b, c = three_runs
    outputs = [{o["path"]: o["sha256"] for o in run["outputs"]} for run in three_runs]
    assert set(outputs[0]) == {"model.pt", "out/metrics.json"}
    assert outputs[0] == outputs[1]
    assert outputs[2]["model.pt"] != outputs[0]["model.pt"]
    assert a["run_id"] < b["run_id"] < c["run_id"]  # ids sort by time


def test_record_holds_every_field(project, three_runs, cpu_lock):
    from envkit.lock.model import load_lockfile

    rec = read_record(project, three_runs[0]["run_id"])
    assert rec["schema_version"] == 1 and rec["status"] == "succeeded" and rec["exit_code"] == 0
    assert rec["script"] == "train.py" and rec["args"] == ["--epochs", "2"]
    assert rec["seed"] == 42 and rec["determinism"] == "strict" and rec["threads"] == 1
    assert rec["image"]["id"].startswith("sha256:")
    assert rec["lock"]["sha256"] == load_lockfile(cpu_lock).content_sha256
    env = rec["environment"]
    assert env["WANDB_API_KEY"] == "<redacted>" and env["PYTHONHASHSEED"] == "42" and env["ENVKIT_SEED"] == "42"
    assert len(rec["code"]["sha256"]) == 64
    assert [f["path"] for f in rec["code"]["files"]] == [".gitignore", "train.py"]  # data/ is gitignored
    assert {o["path"] for o in rec["outputs"]} == {"model.pt", "out/metrics.json"}
    assert all(len(o["sha256"]) == 64 and o["size"] > 0 for o in rec["outputs"])
    run_dir = project / ".envkit" / "runs" / rec["run_id"]
    assert "test accuracy" in (run_dir / rec["logs"]["stdout"]).read_text()
    assert rec["timings"]["run_s"] > 0 and rec["timings"]["total_s"] >= rec["timings"]["run_s"]
    fp = rec["fingerprint"]
    assert fp["host"]["cpu_vendor"] and isinstance(fp["host"]["cpu_flags"], list)
    assert fp["engine"]["version"] and fp["engine"]["storage_driver"]
    assert fp["gpus"]["available"] is False and fp["gpus"]["reason"]  # recorded as absent, not an error
    assert fp["container"]["torch"]["version"] == "2.13.0+cpu"
    assert fp["container"]["job"]["cpu_capability"]
    roles = {b["role"] for b in rec["bootstrap"]}
    assert "main" in roles and any(r.startswith("dataloader worker") for r in roles)
    main = next(b for b in rec["bootstrap"] if b["role"] == "main")
    assert main["hashseed_ok"] is True and main["deterministic_algorithms"] is True


def test_the_input_is_hashed(project, three_runs):
    import hashlib

    rec = read_record(project, three_runs[0]["run_id"])
    assert rec["inputs"] == [{"path": "/data/scale.txt", "size": 4,
                              "sha256": hashlib.sha256(b"1.0\n").hexdigest()}]


def test_runs_lists_and_show_prints(project, three_runs):
    r = envkit("runs", "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    ids = {row["run_id"] for row in json.loads(r.stdout)}
    assert {run["run_id"] for run in three_runs} <= ids
    r = envkit("show", three_runs[0]["run_id"], cwd=project)
    assert r.returncode == 0 and three_runs[0]["run_id"] in r.stdout


SLEEPER = "import time, sys\nprint('ready', flush=True)\ntime.sleep(120)\n"


def test_ctrl_c_stops_the_container_and_marks_the_record(client, tmp_path, tiny_image):
    (tmp_path / "sleep.py").write_text(SLEEPER)
    proc = subprocess.Popen([sys.executable, "-m", "envkit", "run", "--seed", "1", "--image", tiny_image, "sleep.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    run_id = out.strip().splitlines()[-1]
    rec = read_record(tmp_path, run_id)
    assert rec["status"] == "interrupted"
    assert "ready" in (tmp_path / ".envkit" / "runs" / run_id / "stdout.log").read_text()
    assert client.containers.list(all=True, filters={"label": f"io.envkit.run={run_id}"}) == []


def test_a_job_killed_for_memory_is_marked_oom(tmp_path, tiny_image):
    (tmp_path / "hog.py").write_text("x = bytearray(1024 * 1024 * 1024)\nprint(len(x))\n")
    r = envkit("run", "--seed", "1", "--image", tiny_image, "--memory", "64m", "--json", "hog.py", cwd=tmp_path)
    out = json.loads(r.stdout)
    assert out["status"] == "oom" and r.returncode == 137


def test_twenty_concurrent_runs_leave_twenty_intact_records(tmp_path, tiny_image):
    (tmp_path / "draw.py").write_text("import random\nopen('draw.txt', 'w').write(repr(random.random()))\n")

    def one(i: int) -> subprocess.CompletedProcess:
        return envkit("run", "--seed", str(i % 2), "--image", tiny_image, "--json", "draw.py", cwd=tmp_path,
                      timeout=600)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results if r.returncode]
    ids = [json.loads(r.stdout)["run_id"] for r in results]
    assert len(set(ids)) == 20
    draws = {}
    for i, run_id in enumerate(ids):
        rec = read_record(tmp_path, run_id)
        assert rec["status"] == "succeeded"
        draws.setdefault(i % 2, set()).add(rec["outputs"][0]["sha256"])
    assert len(draws[0]) == 1 and len(draws[1]) == 1 and draws[0] != draws[1]
    listing = envkit("runs", "--json", cwd=tmp_path)
    assert len(json.loads(listing.stdout)) == 20 and listing.stderr == ""  # no broken record reported


# `envkit run` exits with the job's code, so its own failures are docker's 125 (the error's own code is in --json).
@pytest.mark.parametrize("args, code, words", [
    (["run", "--seed", "1", "--image", "IMAGE", "nope.py"], EXIT_RUN_FAILED, "script nope.py not found"),
    (["run", "--seed", "1", "--lock", "missing.lock.yaml", "ok.py"], EXIT_RUN_FAILED, "not found"),
    (["run", "--seed", "1", "--image", "envkit/none:none", "ok.py"], EXIT_RUN_FAILED, "not on this"),
    (["show", "../../etc/passwd"], InvalidRunIdError.exit_code, "run id"),
    (["show", "20991231T000000000Z-00000000"], RunNotFoundError.exit_code, "no run"),
])
def test_bad_input_one_line_hint_and_exit_code(tmp_path, tiny_image, args, code, words):
    (tmp_path / "ok.py").write_text("print('ok')\n")
    r = envkit(*[tiny_image if a == "IMAGE" else a for a in args], cwd=tmp_path)
    assert r.returncode == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and words in lines[0]
    assert "Traceback" not in r.stderr and len(lines) <= 2


def test_engine_down(tmp_path, tiny_image):
    (tmp_path / "ok.py").write_text("print('ok')\n")
    r = envkit("run", "--seed", "1", "--image", tiny_image, "--json", "ok.py", cwd=tmp_path,
               env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == EXIT_RUN_FAILED and "hint:" in r.stderr
    assert json.loads(r.stdout)["error"]["code"] == EngineUnavailableError.exit_code
