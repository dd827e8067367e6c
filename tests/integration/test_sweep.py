"""`envkit sweep` end to end: real Docker engine, real Slurm (slurmctld, slurmd, sbatch, squeue, scancel), the real
CLI in subprocesses.

A 4-seed sweep of a small torch training runs as one Slurm job array and again locally: 4 records with distinct
outputs, each carrying its Slurm ids and node; one of them replays IDENTICAL; the report's mean is the mean of the
runs' metrics and its plot is a PNG; the local sweep gives the same bits per seed; `sweep compare` tells a change
of learning rate from a sweep of the same job on other seeds. Then the faults: a failing seed, no metrics.json,
sbatch refusing, Slurm unreachable, Ctrl-C, and `envkit run --backend slurm`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from .conftest import ROOT, envkit
from .test_slurm import slurm_reason

pytestmark = [pytest.mark.docker, pytest.mark.slurm, pytest.mark.slow]


FLAKY = '''import os, sys, time
seed = int(os.environ["ENVKIT_SEED"])
if os.environ.get("SLEEP"):
    open("started-%d" % seed, "w").close()
    time.sleep(float(os.environ["SLEEP"]))
print("seed", seed)
sys.exit(3 if seed == 1 else 0)
'''


@pytest.fixture(autouse=True)
def _need_slurm():
    reason = slurm_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def project(session_dir) -> dict:
    p = session_dir / "sweep-project"
    p.mkdir()
    shutil.copy(ROOT / "examples" / "sweep_train.py", p / "train.py")
    (p / "flaky.py").write_text(FLAKY)
    return {"path": p, "env": {"ENVKIT_HOME": str(session_dir / "sweep-store")}}


def cli(project: dict, *args: str, timeout: float = 900, **env: str) -> subprocess.CompletedProcess:
    return envkit(*args, cwd=project["path"], env={**project["env"], **env}, timeout=timeout)


def cli_json(project: dict, *args: str, code: int = 0, **env: str):
    # --json goes before the script: what follows the script is the script's own arguments.
    at = next((i for i, a in enumerate(args) if a.endswith(".py")), len(args))
    r = cli(project, *args[:at], "--json", *args[at:], **env)
    assert r.returncode == code, r.stderr
    return json.loads(r.stdout)


def record(project: dict, run_id: str) -> dict:
    return cli_json(project, "show", run_id)


@pytest.fixture(scope="module")
def slurm_sweep(project, cpu_lock, cpu_image) -> dict:
    return cli_json(project, "sweep", "--seeds", "0-3", "--backend", "slurm", "--parallel", "2", "--lock",
                    str(cpu_lock), "train.py", "--lr", "0.05")


@pytest.fixture(scope="module")
def local_sweep(project, cpu_image) -> dict:
    return cli_json(project, "sweep", "--seeds", "0-3", "--parallel", "2", "--image", cpu_image, "train.py", "--lr",
                    "0.05")


def test_a_slurm_sweep_gives_four_records_with_distinct_outputs_and_their_slurm_ids(project, slurm_sweep):
    assert slurm_sweep["status"] == "succeeded" and slurm_sweep["backend"] == "slurm"
    runs = [record(project, r["run_id"]) for r in slurm_sweep["runs"]]
    assert [r["seed"] for r in runs] == [0, 1, 2, 3] and [r["status"] for r in runs] == ["succeeded"] * 4
    models = [next(o["sha256"] for o in r["outputs"] if o["path"] == "$ENVKIT_OUTPUT_DIR/model.pt") for r in runs]
    assert len(set(models)) == 4
    scheduler = [r["scheduler"] for r in runs]
    assert {s["array_job_id"] for s in scheduler} == {slurm_sweep["slurm_job_id"]}
    assert sorted(s["array_task_id"] for s in scheduler) == ["0", "1", "2", "3"]
    assert len({s["job_id"] for s in scheduler}) == 4 and all(s["node"] for s in scheduler)
    assert all(r["sweep"]["id"] == slurm_sweep["sweep_id"] for r in runs)
    listed = cli_json(project, "sweeps")
    assert any(s["sweep_id"] == slurm_sweep["sweep_id"] and s["succeeded"] == 4 for s in listed)


def test_a_run_of_the_slurm_sweep_replays_identical(project, slurm_sweep):
    out = cli_json(project, "replay", slurm_sweep["runs"][2]["run_id"])
    assert out["verdict"]["kind"] == "IDENTICAL"


def test_the_reports_mean_is_the_mean_of_the_runs_metrics_and_the_plot_is_a_png(project, slurm_sweep, tmp_path):
    plot = tmp_path / "report.png"
    report = cli_json(project, "sweep", "show", slurm_sweep["sweep_id"], "--plot", str(plot))
    runs = [record(project, r["run_id"]) for r in report["runs"]]
    for name in ("final_loss", "accuracy"):
        values = [r["metrics"][name] for r in runs]
        assert report["metrics"][name]["mean"] == statistics.mean(values)
        assert report["metrics"][name]["n"] == 4 and report["metrics"][name]["std"] == statistics.stdev(values)
    assert report["plot"] == str(plot)
    width, height = png_size(plot.read_bytes())
    assert width > 300 and height > 200


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG whose chunks all check out (signature, CRCs, IHDR first, IEND last)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    return struct.unpack(">II", chunks[0][1][:8])


def test_the_same_sweep_runs_locally_with_the_same_bits_per_seed(project, slurm_sweep, local_sweep):
    assert local_sweep["status"] == "succeeded" and local_sweep["backend"] == "local"
    slurm_runs = [record(project, r["run_id"]) for r in slurm_sweep["runs"]]
    local_runs = [record(project, r["run_id"]) for r in local_sweep["runs"]]
    assert [r["scheduler"] for r in local_runs] == [None] * 4
    for a, b in zip(slurm_runs, local_runs, strict=True):
        assert a["seed"] == b["seed"] and a["metrics"] == b["metrics"]
        assert {o["path"]: o["sha256"] for o in a["outputs"]} == {o["path"]: o["sha256"] for o in b["outputs"]}


def test_compare_tells_a_learning_rate_change_from_the_same_job_on_other_seeds(project, cpu_image, local_sweep):
    other_seeds = cli_json(project, "sweep", "--seeds", "4-7", "--image", cpu_image, "train.py", "--lr", "0.05")
    faster = cli_json(project, "sweep", "--seeds", "0-3", "--image", cpu_image, "train.py", "--lr", "0.5")
    same = cli_json(project, "sweep", "compare", local_sweep["sweep_id"], other_seeds["sweep_id"])
    changed = cli_json(project, "sweep", "compare", local_sweep["sweep_id"], faster["sweep_id"])
    assert same["method"].startswith("Welch's t-test")
    assert {m: c["verdict"] for m, c in same["metrics"].items()} == {
        "accuracy": "within the seed noise", "final_loss": "within the seed noise"}
    assert changed["metrics"]["final_loss"]["verdict"] == "larger than the seed noise"
    assert changed["metrics"]["final_loss"]["difference"] < 0
    text = cli(project, "sweep", "compare", local_sweep["sweep_id"], faster["sweep_id"]).stdout
    assert "Welch's t-test" in text and "larger than the seed noise" in text


# --- faults ------------------------------------------------------------------------------------------------------
def test_a_failing_seed_without_metrics_is_marked_the_others_kept_and_the_exit_is_6(project, tiny_image):
    r = cli(project, "sweep", "--seeds", "0-2", "--backend", "slurm", "--image", tiny_image, "flaky.py")
    assert r.returncode == 6, r.stderr
    assert "no metrics found" in r.stdout
    report = cli_json(project, "sweep", "show", r.stdout.strip().splitlines()[-1])
    assert [(x["seed"], x["state"]) for x in report["runs"]] == [(0, "succeeded"), (1, "failed"), (2, "succeeded")]
    assert report["runs"][1]["exit_code"] == 3 and report["plot"] is None
    assert all(record(project, x["run_id"])["status"] in ("succeeded", "failed") for x in report["runs"])


def test_sbatch_refusing_shows_its_message_and_keeps_no_sweep(project, tiny_image):
    before = len(cli_json(project, "sweeps"))
    r = cli(project, "sweep", "--seeds", "0-1", "--backend", "slurm", "--partition", "no-such-partition", "--image",
            tiny_image, "flaky.py")
    assert r.returncode == 28
    lines = r.stderr.strip().splitlines()
    assert "Invalid partition name specified" in lines[-2] and "sinfo" in lines[-1]
    passed_through = cli(project, "sweep", "--seeds", "0", "--backend", "slurm", "--sbatch=--partition=elsewhere",
                         "--image", tiny_image, "flaky.py")
    assert passed_through.returncode == 28 and "invalid partition specified: elsewhere" in passed_through.stderr
    assert len(cli_json(project, "sweeps")) == before


def test_an_unreachable_slurm_says_to_check_sinfo(project, tiny_image, tmp_path):
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    bad = tmp_path / "slurm.conf"
    bad.write_text("\n".join(["SlurmctldPort=1", *[x for x in conf.splitlines() if not x.startswith(
        "SlurmctldPort=")]]) + "\n")
    r = cli(project, "sweep", "--seeds", "0-1", "--backend", "slurm", "--image", tiny_image, "flaky.py",
            SLURM_CONF=str(bad))
    assert r.returncode == 28
    assert "controller is not reachable" in r.stderr and "`sinfo`" in r.stderr


def test_ctrl_c_cancels_the_array_and_marks_the_unfinished_runs_interrupted(project, tiny_image, client):
    env = {**os.environ, **project["env"]}
    proc = subprocess.Popen([sys.executable, "-m", "envkit", "sweep", "--seeds", "0-3", "--backend", "slurm",
                             "--parallel", "2", "--image", tiny_image, "--env", "SLEEP=300", "--json", "flaky.py"],
                            cwd=project["path"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        store = Path(project["env"]["ENVKIT_HOME"])
        deadline = time.monotonic() + 180
        while not list(store.glob("runs/*/work/started-0")):  # seed 0's job is running in its container
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["status"] == "interrupted"
    states = [x["state"] for x in report["runs"]]
    assert states[0] == "interrupted" and set(states) <= {"interrupted", "cancelled"}
    for x in report["runs"]:
        if x["run_id"]:
            assert record(project, x["run_id"])["status"] == "interrupted"
    job = report["slurm_job_id"]
    left = subprocess.run(["squeue", "-h", "-j", job, "-t", "PENDING,RUNNING"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    run_ids = {x["run_id"] for x in report["runs"] if x["run_id"]}
    containers = client.containers.list(all=True, filters={"label": "io.envkit.run"})
    assert not [c for c in containers if c.labels.get("io.envkit.run") in run_ids]


def test_no_wait_returns_the_sweep_id_and_status_follows_it(project, tiny_image):
    submitted = cli_json(project, "sweep", "--seeds", "0,2", "--backend", "slurm", "--no-wait", "--image",
                         tiny_image, "flaky.py")
    assert submitted["status"] == "running" and submitted["slurm_job_id"].isdigit()
    r = cli(project, "sweep", "status", submitted["sweep_id"], "--follow")
    assert r.returncode == 0, r.stderr
    assert f"sweep {submitted['sweep_id']}: succeeded (2 succeeded)" in r.stdout
    again = cli_json(project, "sweep", "status", submitted["sweep_id"])
    assert [x["state"] for x in again["runs"]] == ["succeeded", "succeeded"]


def test_envkit_run_on_slurm_is_one_recorded_run_with_its_output_and_exit_code(project, tiny_image):
    r = cli(project, "run", "--seed", "1", "--backend", "slurm", "--image", tiny_image, "flaky.py")
    assert r.returncode == 3, r.stderr
    assert "seed 1" in r.stdout
    rec = record(project, r.stdout.strip().splitlines()[-1])
    assert rec["status"] == "failed" and rec["exit_code"] == 3 and rec["scheduler"]["backend"] == "slurm"
    ok = cli_json(project, "run", "--seed", "0", "--backend", "slurm", "--image", tiny_image, "flaky.py")
    assert ok["status"] == "succeeded" and ok["scheduler"]["array_task_id"] == "0"
