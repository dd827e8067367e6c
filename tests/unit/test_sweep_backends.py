"""A seed run as a Slurm task would run it on its node (in-memory engine), the Slurm backend's reading of task
states, and the command line's bad input: one line, a hint, envkit's exit code."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.run.runner import RunRequest
from envkit.store.filestore import FileStore
from envkit.store.sweeps import SweepStore
from envkit.sweep import slurm
from envkit.sweep.backend import states_from_store
from envkit.sweep.slurm_backend import SlurmBackend, slurm_memory
from envkit.sweep.task import run_seed
from envkit.sweep.workflow import SweepRequest, start_sweep

from .fakes import FakeEngine, JobContext, Outcome

SLURM_IDS = {"backend": "slurm", "job_id": "105", "array_job_id": "100", "array_task_id": "1", "node": "node7"}


def job(ctx: JobContext) -> Outcome:
    (ctx.path("/envkit/output") / "metrics.json").write_text(json.dumps({"score": int(ctx.env["ENVKIT_SEED"])}))
    return Outcome(0)


class Submitted:
    """A backend that only records the submission, so that a test can run the seeds as tasks would."""

    name = "slurm"

    def submit(self, sweep):
        sweep.slurm = {"job_id": "100"}

    def status(self, sweep):
        return []


@pytest.fixture()
def submitted(tmp_path: Path):
    """A sweep of 3 seeds submitted (not run) on the fake engine: its plan, snapshot and record in the store."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("pass\n")
    engine = FakeEngine()
    image = engine.add_image("img", job, repo_digests=("registry.example/cpu@sha256:" + "ab" * 32,))
    store = FileStore(tmp_path / "store")
    request = SweepRequest(run=RunRequest(script="train.py", image=image, project=project, trace="off"),
                           seeds=[10, 11, 12], backend="slurm", wait=False)
    outcome = start_sweep(engine, store, request, backend=Submitted())
    return engine, store, outcome.sweep, image


def test_a_task_records_its_slurm_ids_and_node_and_reports_its_run(submitted):
    engine, store, sweep, _ = submitted
    record = run_seed(engine, store, sweep, 1, scheduler=SLURM_IDS)
    assert record.status == "succeeded" and record.seed == 11
    assert record.scheduler == SLURM_IDS and record.sweep == {"id": sweep.sweep_id, "index": 1}
    assert record.metrics == {"score": 11.0}
    task = SweepStore(store.root).read_task(sweep.sweep_id, 1)
    assert task["run_id"] == record.run_id and task["state"] == "succeeded" and task["node"] == "node7"
    states = states_from_store(store, sweep)
    assert [(s.state, s.node) for s in states] == [("pending", None), ("succeeded", "node7"), ("pending", None)]


def test_a_node_without_the_image_pulls_it_by_digest_and_checks_it(submitted):
    engine, store, sweep, image = submitted
    digest = sweep.plan.image.digests[0]
    engine.images.pop(image)
    engine.registries["registry.example"] = {digest: image}
    record = run_seed(engine, store, sweep, 0, scheduler=SLURM_IDS)
    assert record.status == "succeeded" and record.image.id == image
    assert f"image pulled by digest {digest}" in record.notes


def test_a_node_that_cannot_get_the_image_says_how_to_and_makes_no_run(submitted):
    engine, store, sweep, image = submitted
    engine.images.pop(image)
    engine.down.add("registry.example")
    assert run_seed(engine, store, sweep, 2, scheduler=SLURM_IDS) is None
    [state] = [s for s in states_from_store(store, sweep) if s.index == 2]
    assert state.state == "failed" and state.run_id is None
    assert "not on this node's Docker engine" in state.note and "does not answer" in state.note
    assert store.list().runs == []


def test_a_pulled_image_with_another_id_is_refused(submitted):
    engine, store, sweep, image = submitted
    digest = sweep.plan.image.digests[0]
    engine.images.pop(image)
    impostor = engine.add_image("impostor", job)
    engine.registries["registry.example"] = {digest: impostor}
    assert run_seed(engine, store, sweep, 0) is None
    assert "pulled as image" in SweepStore(store.root).read_task(sweep.sweep_id, 0)["error"]


def test_slurm_states_complete_what_the_store_knows(submitted, monkeypatch):
    engine, store, sweep, _ = submitted
    run_type = type(sweep.runs[0])
    sweep.seeds = [10, 11, 12, 13, 14, 15, 16]
    sweep.runs += [run_type(i, 10 + i) for i in range(3, 7)]
    backend = SlurmBackend(store)
    unfinished = {}
    for index in (4, 5, 6):  # runs whose task ended (or is ending) before their record was closed
        record = run_seed(engine, store, sweep, index, scheduler=SLURM_IDS)
        record.status = "running"
        store.write(record)
        SweepStore(store.root).write_task(sweep.sweep_id, index, {"run_id": record.run_id, "state": "running"})
        unfinished[index] = record.run_id
    log_dir = SweepStore(store.root).layout(sweep.sweep_id).slurm
    log_dir.mkdir()
    (log_dir / "task-3.log").write_text("error: image sha256:1234 is not on this node's Docker engine\nhint: push\n")
    started = {"node": "node7"}
    now = time.time()
    answers = [slurm.TaskStatus(0, "PENDING", reason="Priority"), slurm.TaskStatus(1, "RUNNING", node="n1"),
               slurm.TaskStatus(2, "CANCELLED", ended=now),  # cancelled before it started
               slurm.TaskStatus(3, "FAILED", exit_code=1, extra=started, ended=now),
               slurm.TaskStatus(4, "CANCELLED", exit_code=143, extra=started, ended=now),  # its script has exited
               slurm.TaskStatus(5, "CANCELLED", extra=started, ended=now),  # its envkit is still closing the run
               slurm.TaskStatus(6, "COMPLETED", exit_code=0, extra=started, ended=now)]
    monkeypatch.setattr(slurm, "status", lambda job: answers)
    states = backend.status(sweep)
    assert [s.state for s in states] == ["pending", "running", "cancelled", "lost", "interrupted", "running",
                                         "running"]
    assert states[0].note == "Slurm: PENDING (Priority)"
    assert "is not on this node's Docker engine" in states[3].note
    closed = store.read(unfinished[4])
    assert closed.status == "interrupted" and "Slurm ended the task (CANCELLED)" in closed.notes[-1]
    assert store.read(unfinished[5]).status == "running" and "the task is ending" in states[5].note
    assert store.read(unfinished[6]).status == "running"  # exit 0: the record is final, only not visible yet
    # SIGKILL after the grace period left no exit marker: long after the end, the record is closed.
    answers[5] = slurm.TaskStatus(5, "CANCELLED", extra=started, ended=now - slurm.KILL_GRACE_S - 1)
    assert backend.status(sweep)[5].state == "interrupted" and store.read(unfinished[5]).status == "interrupted"


def test_slurm_memory_is_sbatch_mem_in_mib():
    assert slurm_memory("4g") == "4096M" and slurm_memory("1000") == "1M" and slurm_memory(None) is None


# --- the command line --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "words"), [
    (["sweep", "--seeds", "9-0", "train.py"], "seed range '9-0' runs backwards"),
    (["sweep", "--seeds", "0-3,x", "train.py"], "malformed seed list '0-3,x'"),
    (["sweep", "--seeds", "0-3", "--n", "4", "train.py"], "--seeds and --n are both given"),
    (["sweep", "train.py"], "no seeds given"),
    (["sweep", "run", "--seeds", "1,1", "train.py"], "seed 1 is given twice"),
])
def test_a_malformed_seed_range_is_one_line_with_a_hint_and_exit_16(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: ") and words in err[0] and err[1].startswith("hint: ")


def test_sweep_commands_on_an_empty_store(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    assert main(["sweeps", "--json"]) == 0 and json.loads(capsys.readouterr().out) == []
    assert main(["sweep", "show", "20261130T101500123Z-3f9a1c2b"]) == 38
    assert main(["sweep", "status", "../../etc"]) == 16
    assert "malformed sweep id" in capsys.readouterr().err


def test_the_node_entry_point_reports_a_bad_sweep_as_the_cli_would(tmp_path, capsys):
    from envkit.sweep.node import main as node_main

    assert node_main(["--store", str(tmp_path), "../etc", "0"]) == 16
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: malformed sweep id") and err[1].startswith("hint: ")
    assert node_main(["--store", str(tmp_path), "20261130T101500123Z-3f9a1c2b", "0"]) == 38


def test_mlflow_export_of_a_sweep_id_reads_the_sweep(submitted, monkeypatch, capsys):
    engine, store, sweep, _ = submitted
    for index in range(3):
        run_seed(engine, store, sweep, index, scheduler=SLURM_IDS)
    seen = {}

    def export_sweep(sweep_id, runs, stats, *args, **kw):
        seen.update(sweep_id=sweep_id, runs=[r.run_id for r, _ in runs], stats=stats)
        raise __import__("envkit.errors").errors.TrackerError("no tracker in this test")

    monkeypatch.setattr("envkit.tracking.mlflow.export_sweep", export_sweep)
    monkeypatch.setenv("ENVKIT_HOME", str(store.root))
    main(["mlflow", "export", sweep.sweep_id, "--tracking-uri", "http://127.0.0.1:9"])
    assert seen["sweep_id"] == sweep.sweep_id and len(seen["runs"]) == 3
    assert seen["stats"]["score"] == {"n": 3, "mean": 11.0, "std": 1.0, "min": 10.0, "max": 12.0,
                                      "ci95_low": pytest.approx(11.0 - 4.302652729911275 / 3 ** 0.5),
                                      "ci95_high": pytest.approx(11.0 + 4.302652729911275 / 3 ** 0.5)}
    assert main(["mlflow", "export", "20261130T101500123Z-3f9a1c2b", "--tracking-uri", "http://127.0.0.1:9"]) == 31
    assert "no run or sweep" in capsys.readouterr().err


def test_a_sweep_that_could_not_be_submitted_is_not_kept(tmp_path):
    from envkit.errors import SlurmError

    class Refusing(Submitted):
        def submit(self, sweep):
            raise SlurmError("sbatch refused the job: Invalid partition name specified")

    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("pass\n")
    engine = FakeEngine()
    store = FileStore(tmp_path / "store")
    request = SweepRequest(run=RunRequest(script="train.py", image=engine.add_image("img"), project=project),
                           seeds=[0, 1], backend="slurm")
    with pytest.raises(SlurmError, match="Invalid partition"):
        start_sweep(engine, store, request, backend=Refusing())
    assert SweepStore(store.root).list() == ([], [])


def test_a_task_whose_envkit_died_is_closed_by_slurms_state_not_left_abandoned(submitted, monkeypatch):
    """The store lists a running record whose envkit process is gone as `abandoned`; under Slurm that process was
    the task's, so Slurm's state decides: still running while the task ends, interrupted once scancel ended it."""
    engine, store, sweep, _ = submitted
    record = run_seed(engine, store, sweep, 0, scheduler=SLURM_IDS)
    record.status, record.host_pid_start = "running", -1  # its envkit process is gone (another start time)
    store.write(record)
    SweepStore(store.root).write_task(sweep.sweep_id, 0, {"run_id": record.run_id, "state": "running"})
    assert store.read(record.run_id).status == "abandoned"
    started, now = {"node": "node7"}, time.time()
    answers = [slurm.TaskStatus(0, "RUNNING", node="node7", extra=started), slurm.TaskStatus(1, "PENDING"),
               slurm.TaskStatus(2, "PENDING")]
    monkeypatch.setattr(slurm, "status", lambda job: answers)
    backend = SlurmBackend(store)
    assert backend.status(sweep)[0].state == "running"
    answers[0] = slurm.TaskStatus(0, "CANCELLED", exit_code=143, extra=started, ended=now)
    assert backend.status(sweep)[0].state == "interrupted"
    assert store.read(record.run_id).status == "interrupted"
