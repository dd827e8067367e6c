"""The Slurm backend's core on a real cluster: real slurmctld/slurmd, real sbatch, squeue and scancel.

.ci/setup-host (through .ci/setup.d/20-slurm.sh) makes a one-node cluster on the test host. Where sbatch is missing
or sinfo lists no idle node, every test here is skipped with the reason. The tasks run containers on the real Docker
engine, labelled io.envkit.test, and removed by label at the end.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from envkit.errors import SlurmError
from envkit.sweep.slurm import ArrayJob, SlurmOptions, cancel, idle_nodes, status, submit_array, wait

pytestmark = pytest.mark.slurm


@functools.cache
def slurm_reason() -> str | None:
    """None when Slurm takes jobs here, else why not."""
    if shutil.which("sbatch") is None:
        return "Slurm is not installed (no sbatch); .ci/setup-host installs a one-node cluster"
    try:
        nodes = idle_nodes()
    except SlurmError as exc:
        return f"Slurm does not answer: {exc.message}"
    return None if nodes else "sinfo lists no idle node; run .ci/setup.d/20-slurm.sh (as root)"


@pytest.fixture(autouse=True)
def _need_slurm():
    reason = slurm_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def label(client):
    """A label value for this test's containers; every container carrying it is removed afterwards."""
    value = uuid.uuid4().hex[:12]
    yield value
    for container in client.containers.list(all=True, filters={"label": f"io.envkit.slurm-test={value}"}):
        container.remove(force=True)


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    # On this one-node cluster the submitting host is the node; on a real one this folder must be shared.
    return tmp_path


def docker_task(image: str, label: str, out: Path, python: str) -> list[str]:
    return ["docker", "run", "--rm", "--init", "--network", "none", "--label", "io.envkit.test=1",
            "--label", f"io.envkit.slurm-test={label}", "--user", f"{os.getuid()}:{os.getgid()}",
            "-v", f"{out}:/out", *[a for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                                                  "SLURMD_NODENAME") for a in ("-e", name)],
            image, "python3", "-c", python]


WRITE_RESULT = (
    "import json, os; t = os.environ['SLURM_ARRAY_TASK_ID']; "
    "json.dump({k: os.environ[k] for k in ('SLURM_JOB_ID', 'SLURM_ARRAY_JOB_ID', 'SLURM_ARRAY_TASK_ID', "
    "'SLURMD_NODENAME')}, open(f'/out/result-{t}.json', 'w'))"
)


@pytest.mark.docker
def test_four_containerized_tasks_complete_and_carry_their_slurm_ids(base_image, label, shared_dir):
    job = submit_array([docker_task(base_image, label, shared_dir, WRITE_RESULT)] * 4, shared_dir,
                       SlurmOptions(parallel=2, job_name="envkit-test"))
    seen: list[set[str]] = []
    tasks = wait(job, on_progress=lambda ts: seen.append({t.state for t in ts}), poll=0.5, timeout=300)
    assert [(t.index, t.state, t.exit_code) for t in tasks] == [(i, "COMPLETED", 0) for i in range(4)], [
        job.log_path(i).read_text() for i in range(4)]
    assert seen[-1] == {"COMPLETED"}

    results = [json.loads((shared_dir / f"result-{i}.json").read_text()) for i in range(4)]
    assert [r["SLURM_ARRAY_TASK_ID"] for r in results] == ["0", "1", "2", "3"]
    assert {r["SLURM_ARRAY_JOB_ID"] for r in results} == {job.job_id}
    assert len({r["SLURM_JOB_ID"] for r in results}) == 4  # each task is its own job
    assert [r["SLURM_JOB_ID"] for r in results] == [t.slurm_job_id for t in tasks]
    assert {r["SLURMD_NODENAME"] for r in results} <= set(idle_nodes()) | {t.node for t in tasks}
    assert (shared_dir / "array.sh").read_text().startswith("#!/bin/bash")


def test_a_failing_task_is_failed_with_its_exit_code_and_the_others_complete(shared_dir):
    job = submit_array([["true"], ["sh", "-c", "echo broken >&2; exit 3"], "echo ok"], shared_dir)
    tasks = wait(job, poll=0.5, timeout=120)
    assert [(t.state, t.exit_code) for t in tasks] == [("COMPLETED", 0), ("FAILED", 3), ("COMPLETED", 0)]
    assert "broken" in job.log_path(1).read_text()


@pytest.mark.docker
def test_cancel_marks_the_tasks_cancelled_and_stops_their_containers(base_image, label, shared_dir, client):
    sleeper = "import time; open('/out/started', 'w').close(); time.sleep(300)"
    job = submit_array([docker_task(base_image, label, shared_dir, sleeper)] * 4, shared_dir,
                       SlurmOptions(parallel=1))
    deadline = time.monotonic() + 120
    while not (shared_dir / "started").exists():  # task 0's container is up
        assert time.monotonic() < deadline, [t.state for t in status(job)]
        time.sleep(0.5)
    with pytest.raises(SlurmError, match="not finished after 1 s"):
        wait(job, poll=0.2, timeout=1)
    cancel(job.job_id)
    tasks = wait(job, poll=0.5, timeout=120)
    assert [t.state for t in tasks] == ["CANCELLED"] * 4
    assert tasks[0].exit_code == 143  # the task's own marker: it saw the SIGTERM
    deadline = time.monotonic() + 60
    while client.containers.list(all=True, filters={"label": f"io.envkit.slurm-test={label}"}):
        assert time.monotonic() < deadline, "the cancelled task's container is still there"
        time.sleep(0.5)
    cancel(job.job_id)  # again: an ended job is not an error


def test_bad_partition_shows_sbatchs_message(shared_dir):
    with pytest.raises(SlurmError) as err:
        submit_array([["true"]], shared_dir, SlurmOptions(partition="no-such-partition"))
    assert "sbatch refused the job" in err.value.message
    assert "Invalid partition name specified" in err.value.message
    assert "sinfo" in err.value.hint


def test_unreachable_controller_says_to_check_sinfo(shared_dir, tmp_path, monkeypatch):
    # The real client tools, pointed at a port where no controller listens.
    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")).read_text()
    lines = [line for line in conf.splitlines() if not line.startswith("SlurmctldPort=")]
    bad = tmp_path / "slurm.conf"
    bad.write_text("\n".join(["SlurmctldPort=1", *lines]) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(bad))
    with pytest.raises(SlurmError) as err:
        submit_array([["true"]], shared_dir / "out")
    assert "controller is not reachable" in err.value.message and "sinfo" in err.value.hint


def test_a_job_slurm_has_forgotten_is_read_from_the_task_markers(shared_dir):
    # squeue forgets a job MinJobAge after it ends; a job id the controller never had answers the same way.
    (shared_dir / "task-0.exit").write_text("0\n")
    (shared_dir / "task-0.start").write_text('{"job_id": "41", "node": "n1"}')
    (shared_dir / "task-1.exit").write_text("2\n")
    (shared_dir / "task-2.exit").write_text("143\n")
    (shared_dir / "task-2.signal").write_text("TERM\n")
    tasks = status(ArrayJob("999999", 4, shared_dir))
    assert [(t.state, t.exit_code, t.source) for t in tasks] == [
        ("COMPLETED", 0, "marker"), ("FAILED", 2, "marker"), ("CANCELLED", 143, "marker"),
        ("UNKNOWN", None, "marker")]
    assert (tasks[0].node, tasks[0].slurm_job_id) == ("n1", "41")
