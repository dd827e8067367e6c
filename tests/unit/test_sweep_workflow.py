"""Sweeps against the in-memory engine (tests/unit/fakes.py): the local backend's grouping, failures, Ctrl-C, and
what a seed's record carries.

What a user relies on: one ordinary run per seed, each naming its sweep; a failing seed is marked while the others
are kept; runs without metrics.json are kept and the report says so; Ctrl-C stops the running seeds (recorded
interrupted) and starts no other; the report's mean is the mean of the runs' metrics; secrets never reach the sweep
record on disk.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from envkit.errors import SweepError
from envkit.run.runner import RunRequest
from envkit.store.filestore import FileStore
from envkit.store.record import REDACTED
from envkit.store.sweeps import SweepStore
from envkit.sweep.workflow import SweepRequest, compare_sweeps, follow, load_sweep, start_sweep

from .fakes import FakeEngine, JobContext, Outcome


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "train.py").write_text("print('the fake engine does not run me')\n")
    return p


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def metrics_job(ctx: JobContext) -> Outcome:
    """Accuracy and loss that depend on the seed, as a training's would."""
    seed = int(ctx.env["ENVKIT_SEED"])
    metrics = {"accuracy": 0.9 + seed / 100, "val_loss": 1.0 / (seed + 1)}
    (ctx.path("/envkit/output") / "metrics.json").write_text(json.dumps(metrics))
    ctx.path("/work/model.bin").write_bytes(str(seed).encode())
    return Outcome(0, stdout=f"seed {seed}\n".encode())


def sweep(engine: FakeEngine, store: FileStore, project: Path, image: str, seeds: list[int], parallel: int = 2,
          args: list[str] | None = None, env: dict | None = None, **kw):
    request = SweepRequest(run=RunRequest(script="train.py", args=args or [], image=image, project=project,
                                          trace="off", env=env or {}), seeds=seeds, parallel=parallel)
    return start_sweep(engine, store, request, **kw)


def test_one_ordinary_run_per_seed_grouped_under_the_sweep(project, store):
    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", metrics_job), [3, 1, 4, 5])
    rec = outcome.sweep
    assert rec.status == "succeeded" and rec.seeds == [3, 1, 4, 5]
    assert [s.state for s in outcome.states] == ["succeeded"] * 4
    records = [store.read(s.run_id) for s in outcome.states]
    assert [r.seed for r in records] == [3, 1, 4, 5]
    assert [r.sweep for r in records] == [{"id": rec.sweep_id, "index": i} for i in range(4)]
    assert len({r.run_id for r in records}) == 4 and len(store.list().runs) == 4  # ordinary runs, listed as such
    assert len({r.code.sha256 for r in records}) == 1 == len({r.image.id for r in records})
    assert records[1].metrics == {"accuracy": 0.91, "val_loss": 0.5}
    assert records[0].environment["ENVKIT_SEED"] == "3"
    # The sweep record on disk names every run, in seed order.
    on_disk = SweepStore(store.root).read(rec.sweep_id)
    assert [(r.seed, r.run_id, r.state) for r in on_disk.runs] == [(r.seed, r.run_id, "succeeded") for r in records]


def test_report_statistics_are_those_of_the_runs_metrics(project, store):
    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", metrics_job), [0, 1, 2, 3, 4])
    meta, runs, table = load_sweep(store, outcome.sweep.sweep_id)
    values = [record.metrics["accuracy"] for record, _ in runs]
    assert table["accuracy"]["n"] == 5
    assert table["accuracy"]["mean"] == pytest.approx(sum(values) / 5, rel=1e-15)
    assert table["accuracy"]["min"] == min(values) and table["accuracy"]["max"] == max(values)
    assert table["accuracy"]["ci95_low"] < table["accuracy"]["mean"] < table["accuracy"]["ci95_high"]
    assert [folder for _, folder in runs] == [store.run_dir(r.run_id) for r, _ in runs]
    assert meta.sweep_id == outcome.sweep.sweep_id


def test_at_most_parallel_runs_at_once(project, store):
    lock, running, peak = threading.Lock(), [0], [0]

    def job(ctx: JobContext) -> Outcome:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return metrics_job(ctx)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), list(range(6)), parallel=2)
    assert outcome.sweep.parallel == 2 and peak[0] <= 2
    assert outcome.sweep.status == "succeeded"


def test_next_runs_are_prepared_while_others_run_and_their_wait_is_not_run_time(project, store):
    def job(ctx: JobContext) -> Outcome:
        time.sleep(0.4)
        return metrics_job(ctx)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1, 2], parallel=1)
    records = sorted((store.read(s.run_id) for s in outcome.states), key=lambda r: r.started)
    assert all(0.4 <= r.timings.run_s < 0.75 for r in records), [r.timings.run_s for r in records]
    # Prepared ahead: the second run's folder existed before the first run's container ended.
    assert records[1].created < records[0].finished


def test_a_failing_seed_is_marked_and_the_others_are_kept(project, store):
    def job(ctx: JobContext) -> Outcome:
        if ctx.env["ENVKIT_SEED"] == "2":
            return Outcome(3, stderr=b"Traceback: boom\n")
        return metrics_job(ctx)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1, 2, 3])
    assert outcome.sweep.status == "failed"
    assert [(s.seed, s.state, s.exit_code) for s in outcome.states] == [
        (0, "succeeded", 0), (1, "succeeded", 0), (2, "failed", 3), (3, "succeeded", 0)]
    _, runs, table = load_sweep(store, outcome.sweep.sweep_id)
    assert len(runs) == 4 and table["accuracy"]["n"] == 3  # the failed run is kept, not counted
    from envkit.cli.sweep import exit_code

    assert exit_code(outcome.sweep.status) == 6


def test_runs_without_metrics_are_kept_and_the_report_says_no_metrics(project, store):
    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", lambda ctx: Outcome(0)), [0, 1])
    assert outcome.sweep.status == "succeeded"
    from envkit.sweep.report import render_text
    from envkit.sweep.workflow import summarize

    summary, runs = summarize(store, outcome.sweep)
    assert [r.metrics for r, _ in runs] == [None, None]
    text = render_text(summary)
    assert "no metrics found" in text and "none of the 2 runs has a counted metrics.json" in text


@pytest.fixture(params=["default", "ignored"])
def sigint(request):
    """Ctrl-C as Python handles it by default, and as a sweep started in the background of a script inherits it:
    ignored (`kill -INT` must stop it all the same)."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler if request.param == "default" else signal.SIG_IGN)
    yield request.param
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_the_running_seeds_records_them_interrupted_and_starts_no_other(project, store, sigint):
    started = []

    def job(ctx: JobContext) -> Outcome:
        started.append(ctx.env["ENVKIT_SEED"])
        if len(started) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while two seeds run
        assert ctx.stopped.wait(10), "the sweep did not stop the container"
        return Outcome(0)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1, 2, 3, 4, 5], parallel=2)
    assert outcome.sweep.status == "interrupted"
    assert len(started) == 2  # no job started after Ctrl-C
    states = {s.seed: s for s in outcome.states}
    ran = [states[int(seed)] for seed in started]
    assert [s.state for s in ran] == ["interrupted", "interrupted"]
    # The others: prepared while those ran (a run folder, never a container: interrupted) or never begun.
    rest = [s for s in outcome.states if str(s.seed) not in started]
    assert all((s.state, s.run_id is None) in (("interrupted", False), ("cancelled", True)) for s in rest)
    assert any(s.state == "cancelled" for s in rest)
    for s in outcome.states:
        if s.run_id:
            assert store.read(s.run_id).status == "interrupted"
    assert SweepStore(store.root).read(outcome.sweep.sweep_id).status == "interrupted"
    from envkit.cli.sweep import exit_code

    assert exit_code("interrupted") == 130


def test_every_seed_runs_the_snapshot_taken_when_the_sweep_started(project, store):
    def job(ctx: JobContext) -> Outcome:
        (project / "train.py").write_text("edited while the sweep runs\n")  # the user goes on working
        return metrics_job(ctx)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1, 2], parallel=1)
    records = [store.read(s.run_id) for s in outcome.states]
    assert len({r.code.sha256 for r in records}) == 1
    for r in records:
        assert (store.layout(r.run_id).code / "train.py").read_text().startswith("print(")


def test_secrets_reach_the_job_but_not_the_sweep_record(project, store):
    seen = []

    def job(ctx: JobContext) -> Outcome:
        seen.append(ctx.env["API_TOKEN"])
        return metrics_job(ctx)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1],
                    env={"API_TOKEN": "s3cret", "LR": "0.1"})
    assert seen == ["s3cret", "s3cret"]
    layout = SweepStore(store.root).layout(outcome.sweep.sweep_id)
    assert "s3cret" not in layout.record.read_text()
    assert outcome.sweep.plan.env == {"API_TOKEN": REDACTED, "LR": "0.1"}
    assert store.read(outcome.states[0].run_id).environment["API_TOKEN"] == REDACTED


def test_a_job_that_edits_a_committed_metrics_file_counts_but_an_untouched_one_does_not(project, store):
    (project / "metrics.json").write_text('{"stale": 1}')

    def job(ctx: JobContext) -> Outcome:
        if ctx.env["ENVKIT_SEED"] == "1":
            ctx.path("/work/metrics.json").write_text('{"fresh": 2, "name": "x", "nan": NaN}')
        return Outcome(0)

    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", job), [0, 1])
    untouched, written = (store.read(s.run_id) for s in outcome.states)
    assert untouched.metrics is None
    assert written.metrics == {"fresh": 2.0}
    assert any("left out, not a number: 'name'" in n for n in written.notes)
    assert any("not finite" in n and "'nan'" in n for n in written.notes)


def test_two_sweeps_with_a_real_difference_are_told_apart_from_two_of_the_same_job(project, store):
    def job(ctx: JobContext) -> Outcome:
        seed = int(ctx.env["ENVKIT_SEED"])
        shift = float(ctx.spec.command[-1])
        noise = ((seed * 7919) % 13) / 100  # a spread over seeds, the same for the same seed
        (ctx.path("/envkit/output") / "metrics.json").write_text(json.dumps({"loss": shift + noise}))
        return Outcome(0)

    engine = FakeEngine()
    image = engine.add_image("img", job)
    a = sweep(engine, store, project, image, list(range(0, 6)), args=["1.0"]).sweep.sweep_id
    same = sweep(engine, store, project, image, list(range(6, 12)), args=["1.0"]).sweep.sweep_id
    shifted = sweep(engine, store, project, image, list(range(0, 6)), args=["2.0"]).sweep.sweep_id
    [within] = compare_sweeps(store, a, same).metrics
    [larger] = compare_sweeps(store, a, shifted).metrics
    assert within.verdict == "within the seed noise" and within.p > 0.05
    assert larger.verdict == "larger than the seed noise" and larger.p < 0.05
    assert compare_sweeps(store, a, same).method.startswith("Welch's t-test")


def test_a_container_the_engine_refuses_is_a_failed_seed_with_the_reason(project, store):
    engine = FakeEngine(create_error="no space left on device")
    outcome = sweep(engine, store, project, engine.add_image("img", metrics_job), [0, 1])
    assert outcome.sweep.status == "failed"
    assert [s.state for s in outcome.states] == ["failed", "failed"]
    assert all(s.run_id and "no space left" in (s.note or "") for s in outcome.states)


def test_follow_of_a_finished_sweep_gives_its_stored_states(project, store):
    engine = FakeEngine()
    outcome = sweep(engine, store, project, engine.add_image("img", metrics_job), [0, 1])
    again = follow(store, outcome.sweep.sweep_id)
    assert [(s.seed, s.state, s.run_id) for s in again.states] == [(s.seed, s.state, s.run_id) for s in outcome.states]


@pytest.mark.parametrize(("kw", "words"), [
    ({"parallel": 0}, "--parallel 0"),
    ({"seeds": []}, "no seeds"),
])
def test_bad_sweep_options_are_one_error_and_leave_nothing(project, store, kw, words):
    engine = FakeEngine()
    image = engine.add_image("img", metrics_job)
    request = SweepRequest(run=RunRequest(script="train.py", image=image, project=project),
                           seeds=kw.get("seeds", [0]), parallel=kw.get("parallel"))
    with pytest.raises(SweepError, match=words):
        start_sweep(engine, store, request)
    assert not (store.root / "sweeps").exists() or not any((store.root / "sweeps").iterdir())


def test_no_wait_is_for_slurm_only(project, store):
    engine = FakeEngine()
    request = SweepRequest(run=RunRequest(script="train.py", image=engine.add_image("img"), project=project),
                           seeds=[0], wait=False)
    with pytest.raises(SweepError, match="--no-wait needs --backend slurm"):
        start_sweep(engine, store, request)
