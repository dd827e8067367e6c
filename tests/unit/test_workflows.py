"""The run, replay and build workflows against the in-memory engine (tests/unit/fakes.py): no daemon.

What a user relies on here: a run ends in the status that matches what happened to its container, and its record
exists before the job starts; a replay says IDENTICAL, DIVERGED or FAILED for what the rerun did, takes the image from
whichever registry still answers, and refuses a host whose numerics differ unless forced; a second build of a lock
is a cache hit that builds nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

from envkit.errors import JobError, PlatformMismatchError, RegistryError
from envkit.image.builder import build_image
from envkit.image.render import plan_build
from envkit.lock.model import BaseImage, Lockfile, PinnedPackage, Platform
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.settings import LABEL_BUILD_KEY
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, JobContext, Outcome, venv_install

QUIET = Sink(None, None)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "train.py").write_text("print('the fake engine does not run me')\n")
    return p


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def seeded_job(ctx: JobContext) -> Outcome:
    """Writes weights that depend on the seed only, like a deterministic training."""
    seed = ctx.env["ENVKIT_SEED"]
    ctx.path("/work/model.bin").write_bytes(hashlib.sha256(seed.encode()).digest())
    (ctx.path("/envkit/output") / "metrics.json").write_text(json.dumps({"seed": int(seed)}))
    return Outcome(0, stdout=f"trained with seed {seed}\n".encode())


def start(engine: FakeEngine, store: FileStore, project: Path, image: str, seed: int = 7):
    return run(engine, store, RunRequest(script="train.py", seed=seed, image=image, project=project, trace="off"),
               sink=QUIET)


# --- the executor's statuses -------------------------------------------------------------------------------------------
def test_a_run_succeeds_with_its_outputs_and_a_record_written_before_the_job(project, store):
    seen = {}

    def job(ctx: JobContext) -> Outcome:
        run_dir = ctx.path("/work").parent
        seen["status"] = json.loads((run_dir / "record.json").read_text())["status"]
        return seeded_job(ctx)

    engine = FakeEngine()
    record = start(engine, store, project, engine.add_image("img", job))
    assert seen["status"] == "running"
    assert record.status == "succeeded" and record.exit_code == 0
    assert [e.path for e in record.outputs] == ["$ENVKIT_OUTPUT_DIR/metrics.json", "model.bin"]
    assert store.read(record.run_id).status == "succeeded"
    assert store.layout(record.run_id).stdout_log.read_bytes() == b"trained with seed 7\n"
    assert any(call == "remove" for call, _ in engine.calls)  # the container is removed afterwards


@pytest.mark.parametrize(("outcome", "status", "code"), [
    (Outcome(3, stderr=b"Traceback...\n"), "failed", 3),
    (Outcome(137, oom=True), "oom", 137),
])
def test_a_failed_or_oom_job_is_recorded_so(project, store, outcome, status, code):
    engine = FakeEngine()
    record = start(engine, store, project, engine.add_image("img", lambda ctx: outcome))
    assert (record.status, record.exit_code) == (status, code)


def test_ctrl_c_stops_the_container_and_marks_the_run_interrupted(project, store):
    def job(ctx: JobContext) -> Outcome:
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C while the job runs
        assert ctx.stopped.wait(5), "the executor did not stop the container"
        return Outcome(0)

    engine = FakeEngine()
    record = start(engine, store, project, engine.add_image("img", job))
    assert record.status == "interrupted" and record.exit_code == 143


@pytest.mark.parametrize("where", ["create", "start"])
def test_a_container_the_engine_refuses_ends_the_record_as_failed(project, store, where):
    engine = FakeEngine(**{f"{where}_error": "could not select device driver \"\" with capabilities: [[gpu]]"})
    image = engine.add_image("img", seeded_job)
    with pytest.raises(JobError, match="device driver"):
        start(engine, store, project, image)
    [summary] = store.list().runs
    record = store.read(summary.run_id)
    assert record.status == "failed" and "could not run" in record.notes[0]


# --- replay's verdicts -------------------------------------------------------------------------------------------------
def test_replay_of_a_deterministic_job_is_identical(project, store):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", seeded_job))
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "IDENTICAL" and result.exit_code == 0
    assert result.record.replay_of == original.run_id
    assert store.read(result.run_id).verdict["kind"] == "IDENTICAL"  # written with the record, not after it


def test_replay_of_a_job_reading_urandom_diverges_naming_the_file(project, store):
    def noisy(ctx: JobContext) -> Outcome:
        ctx.path("/work/noise.bin").write_bytes(os.urandom(8))
        ctx.path("/work/same.txt").write_text("same")
        return Outcome(0)

    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", noisy))
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "DIVERGED" and result.exit_code == 3
    assert [(f.path, f.change) for f in result.verdict.files] == [("noise.bin", "differs")]


def test_replay_of_a_job_that_now_fails_is_failed(project, store):
    calls = []

    def flaky(ctx: JobContext) -> Outcome:
        calls.append(1)
        return Outcome(0) if len(calls) == 1 else Outcome(1)

    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", flaky))
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "FAILED" and result.exit_code == 4 and result.verdict.exit_code == 1


def test_replay_pulls_from_the_registry_that_still_answers(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", seeded_job)
    gone, alive = f"reg-a/envkit/x@sha256:{'a' * 64}", f"reg-b/envkit/x@sha256:{'b' * 64}"
    engine.registries = {"reg-a": {gone: image}, "reg-b": {alive: image}}
    original = start(engine, store, project, image)
    record = store.read(original.run_id)
    record.image.digests = [gone, alive]
    store.write(record)
    engine.down = {"reg-a"}
    del engine.images[image]  # this host never had the image
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "IDENTICAL"
    assert result.notes == [f"image pulled by digest {alive}"]
    assert [ref for call, ref in engine.calls if call == "pull"] == [gone, alive]


def test_replay_refuses_an_image_the_registry_swapped(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", seeded_job)
    other = engine.add_image("another image")
    ref = f"reg/envkit/x@sha256:{'c' * 64}"
    engine.registries = {"reg": {ref: other}}
    original = start(engine, store, project, image)
    record = store.read(original.run_id)
    record.image.digests = [ref]
    store.write(record)
    del engine.images[image]
    with pytest.raises(RegistryError, match="do not trust|pulled as image"):
        replay(engine, store, original.run_id, sink=QUIET)


def test_replay_refuses_a_host_whose_numerics_differ_then_runs_when_forced(project, store):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", seeded_job))
    record = store.read(original.run_id)
    recorded_vendor = "GenuineIntel" if record.fingerprint.host.get("cpu_vendor") != "GenuineIntel" else "AuthenticAMD"
    record.fingerprint.host["cpu_vendor"] = recorded_vendor  # recorded on another vendor's CPU, by construction
    store.write(record)
    with pytest.raises(PlatformMismatchError) as refused:
        replay(engine, store, original.run_id, sink=QUIET)
    assert [d.path for d in refused.value.differences] == ["host.cpu_vendor"]
    assert refused.value.differences[0].recorded == recorded_vendor
    assert len(store.list().runs) == 1  # nothing ran
    forced = []
    result = replay(engine, store, original.run_id, force=True, sink=QUIET, on_forced=forced.append)
    assert result.verdict.kind == "IDENTICAL" and result.record.platform_mismatch
    assert [d.path for d in forced[0]] == ["host.cpu_vendor"]


# --- the build cache ---------------------------------------------------------------------------------------------------
def tiny_lock(tmp_path: Path, base_id: str) -> Lockfile:
    """A sealed one-package lock whose wheel is a local file (the build fetches it by hash into its cache)."""
    wheel = tmp_path / "six-1.16.0-py2.py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    return Lockfile(
        name="tiny", python="3.11", platform=Platform("linux", "x86_64", "x86_64-manylinux_2_28"),
        base=BaseImage(ref="base", digest=base_id, python="3.11.2"), requirements=("six",), sources={},
        environment={}, generated_by="test",
        packages=(PinnedPackage("six", "1.16.0", wheel.name, wheel.as_uri(),
                                hashlib.sha256(wheel.read_bytes()).hexdigest()),),
    ).sealed()


def test_a_second_build_of_a_lock_is_a_cache_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")  # a lock made in the test, read from its own local path
    engine = FakeEngine()
    lock = tiny_lock(tmp_path, engine.add_image("base", job=venv_install))
    first = build_image(engine, lock)
    assert not first.cache_hit and [c for c, _ in engine.calls].count("create") == 1  # the venv's container
    assert engine.images[first.image_id].labels[LABEL_BUILD_KEY] == plan_build(lock).build_key
    second = build_image(engine, lock)
    assert second.cache_hit and second.image_id == first.image_id
    assert [c for c, _ in engine.calls].count("create") == 1  # nothing was built again


def test_an_image_labelled_with_a_locks_build_key_is_not_taken_for_its_build(tmp_path, monkeypatch):
    """Anyone can compute a public lock's build key and load an image carrying it (a bundle, a pull): only images
    envkit itself built for the key are cache hits."""
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")  # the test's lock names its own local wheel
    engine = FakeEngine()
    lock = tiny_lock(tmp_path, engine.add_image("base", job=venv_install))
    planted = engine.add_image("planted", labels={LABEL_BUILD_KEY: plan_build(lock).build_key})
    result = build_image(engine, lock)
    assert not result.cache_hit and result.image_id != planted
    assert build_image(engine, lock).image_id == result.image_id  # its own build is found again


# --- the job's privileges and its record's end (issue 12) ----------------------------------------------------------
def test_the_job_runs_unprivileged_with_no_capabilities(project, store):
    seen = {}

    def job(ctx: JobContext) -> Outcome:
        seen["work_owner"] = ctx.path("/work").stat().st_uid
        return Outcome(0)

    engine = FakeEngine()
    record = start(engine, store, project, engine.add_image("img", job))
    spec = next(arg for call, arg in engine.calls if call == "create")
    assert spec.cap_drop == ("ALL",) and "no-new-privileges" in spec.security_opt and spec.pids_limit
    expected = "65532:65532" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}"
    assert spec.user == expected and record.user == expected
    assert seen["work_owner"] == int(expected.split(":")[0])  # the folders the job writes are its own
    assert spec.network == "none" and record.network == "none"
    assert record.host_pid == os.getpid() and record.host_pid_start


def test_only_the_documented_network_modes_are_accepted(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", seeded_job)
    with pytest.raises(JobError, match="network 'host'"):
        run(engine, store, RunRequest(script="train.py", seed=1, image=image, project=project, network="host"),
            sink=QUIET)
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=image, project=project,
                                           network="bridge", trace="off"), sink=QUIET)
    replayed = replay(engine, store, record.run_id, sink=QUIET).record
    assert record.network == replayed.network == "bridge"  # replay keeps the network mode


def test_a_closed_terminal_stops_the_job_like_ctrl_c(project, store):
    def job(ctx: JobContext) -> Outcome:
        os.kill(os.getpid(), signal.SIGHUP)
        assert ctx.stopped.wait(5)
        return Outcome(0)

    engine = FakeEngine()
    assert start(engine, store, project, engine.add_image("img", job)).status == "interrupted"


def test_a_run_whose_envkit_died_is_shown_abandoned_and_doctor_marks_it(project, store):
    import subprocess

    from envkit.doctor import clean_abandoned
    from envkit.store.filestore import process_start

    engine = FakeEngine()
    record = start(engine, store, project, engine.add_image("img", seeded_job))
    dead = subprocess.Popen(["sleep", "0"])
    dead.wait()
    record.status, record.host_pid, record.host_pid_start = "running", dead.pid, 12345  # killed mid-run
    store.write(record)
    assert store.list().rows[0]["status"] == "abandoned"
    assert store.read(record.run_id).status == "abandoned"
    live = store.read(record.run_id)
    live.status, live.host_pid, live.host_pid_start = "running", os.getpid(), process_start(os.getpid())
    store.write(live)
    assert store.read(record.run_id).status == "running"  # its process is alive: not abandoned
    record.status = "running"
    store.write(record)
    marked, _ = clean_abandoned(store.root)
    assert marked == [record.run_id]
    assert json.loads(store.layout(record.run_id).record.read_text())["status"] == "abandoned"


def test_credential_files_stay_out_of_the_snapshot_with_a_warning(project, store):
    (project / ".env").write_text("HF_TOKEN=hf_secret\n")
    (project / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    warnings = []
    engine = FakeEngine()
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=engine.add_image("img", seeded_job),
                                           project=project, trace="off"), sink=QUIET, on_warning=warnings.append)
    files = [e.path for e in record.code.files]
    assert ".env" not in files and "id_rsa" not in files and "train.py" in files
    assert len(warnings) == 1 and ".env" in warnings[0] and warnings[0] in record.notes
