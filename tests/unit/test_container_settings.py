"""Container settings real jobs need (shared memory, IPC, ulimits, user, env files): the defaults, the refusals, what
the record keeps and what a replay does with it. Against the in-memory engine; the real engine's /dev/shm is checked in
tests/integration/test_container_settings.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envkit.errors import JobError
from envkit.replay import replay
from envkit.run.container import container_settings, default_shm_size, read_env_file
from envkit.sizes import parse_size
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord

from .fakes import FakeEngine, JobContext, Outcome
from .gpu_hosts import use_host

QUIET = Sink(None, None)
GIB = 2**30


@pytest.mark.parametrize(("memory", "host", "expected"), [
    (None, 16 * GIB, "8g"),  # half the RAM, as Linux sizes /dev/shm outside containers
    ("4g", 16 * GIB, "2g"),  # half the job's memory limit: shm pages count against it
    ("64g", 16 * GIB, "8g"),  # a limit above the host's RAM: the RAM
    ("96m", 16 * GIB, "64m"),  # never under Docker's own 64 MB
    (None, None, "1g"),  # memory unknown
    ("lots", 16 * GIB, "8g"),  # not a size: the engine refuses it (and the run is recorded failed), not this
])
def test_the_default_shm_is_half_the_memory_the_job_may_use(memory, host, expected):
    assert default_shm_size(memory, host) == expected


def test_the_default_fits_a_dataloader_with_2_workers_and_32_mb_batches():
    # Two workers, each prefetching two batches of 32 MB, are 128 MB in /dev/shm at once; Docker's 64 MB is not.
    assert parse_size(default_shm_size(None, 2 * GIB)) >= 2 * 2 * 32 * 2**20 * 4


@pytest.mark.parametrize(("text", "size"), [("512m", 512 * 2**20), ("8g", 8 * GIB), ("1.5g", int(1.5 * GIB)),
                                            ("64MiB", 64 * 2**20), ("1073741824", GIB), ("2G", 2 * GIB)])
def test_sizes_in_dockers_syntax(text, size):
    assert parse_size(text) == size


def test_settings_refuse_bad_values_in_one_line():
    with pytest.raises(JobError, match="--shm-size: 'lots' is not a size"):
        container_settings("none", shm_size="lots")
    with pytest.raises(JobError, match="under 1 MiB"):
        container_settings("none", shm_size="10k")
    with pytest.raises(JobError, match="--ipc 'container:x' is not one of private, shareable, host"):
        container_settings("none", ipc="container:x")
    with pytest.raises(JobError, match="not UID or UID:GID"):
        container_settings("none", user="root")


def test_ipc_host_uses_the_hosts_shm_and_gpu_jobs_get_ncclss_ulimits():
    host = container_settings("1", ipc="host", host_memory=8 * GIB)
    assert host.shm_size is None and host.ipc == "host" and host.ulimits["memlock"] == (-1, -1)
    cpu = container_settings("none", host_memory=8 * GIB)
    assert (cpu.shm_size, cpu.ipc, cpu.ulimits) == ("4g", "private", {})


def test_another_user_needs_root(monkeypatch):
    monkeypatch.setattr("os.getuid", lambda: 1000)
    assert container_settings("none", user="1000").user == "1000:1000"
    with pytest.raises(JobError, match="only root can hand the run's folders to another user"):
        container_settings("none", user="1001:1001")


def test_env_files_are_read_as_docker_reads_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FROM_SHELL", "shell value")
    monkeypatch.delenv("NOT_SET", raising=False)
    f = tmp_path / "job.env"
    f.write_text('# a comment\n\nA=1\nQUOTED="kept as is"\n  SPACED=a b \nFROM_SHELL\nNOT_SET\nCRLF=x\r\nEMPTY=\n')
    assert read_env_file(f) == {"A": "1", "QUOTED": '"kept as is"', "SPACED": "a b ", "FROM_SHELL": "shell value",
                                "CRLF": "x", "EMPTY": ""}


@pytest.mark.parametrize(("text", "message"), [
    ("A=1\nnot a name=2\n", "line 2: 'not a name' is not a variable name"),
    ("ENVKIT_SEED=3\n", "ENVKIT_SEED is set by envkit"),
    ("NVIDIA_VISIBLE_DEVICES=all\n", "NVIDIA_VISIBLE_DEVICES is set by envkit"),
])
def test_bad_env_files_are_one_line(tmp_path, text, message):
    f = tmp_path / "bad.env"
    f.write_text(text)
    with pytest.raises(JobError, match=message):
        read_env_file(f)
    with pytest.raises(JobError, match="not found"):
        read_env_file(tmp_path / "missing.env")
    (tmp_path / "binary.env").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(JobError, match="cannot read"):
        read_env_file(tmp_path / "binary.env")


# --- the workflow --------------------------------------------------------------------------------------------------
@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "train.py").write_text("print('hi')\n")
    return p


def env_job(ctx: JobContext) -> Outcome:
    keys = ("HF_TOKEN", "PLAIN", "FROM_CLI")
    (ctx.path("/envkit/output") / "env.json").write_text(json.dumps({k: ctx.env.get(k) for k in keys}))
    return Outcome(0)


def test_an_env_file_feeds_the_job_its_secrets_are_redacted_and_it_is_not_snapshotted(project, tmp_path,
                                                                                        monkeypatch):
    use_host(monkeypatch, "cpu")
    (project / "secrets.env").write_text("HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz\nPLAIN=1\nFROM_CLI=file\n")
    store, engine = FileStore(tmp_path / "store"), FakeEngine()
    image = engine.add_image("img", env_job)
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=image, project=project, trace="off",
                                           env_file=project / "secrets.env", env={"FROM_CLI": "cli"}), sink=QUIET)
    layout = store.layout(record.run_id)
    seen = json.loads((layout.output / "env.json").read_text())
    assert seen == {"HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz", "PLAIN": "1", "FROM_CLI": "cli"}  # --env wins
    assert record.environment["HF_TOKEN"] == "<redacted>" and record.environment["PLAIN"] == "1"
    assert "hf_abc" not in layout.record.read_text()
    assert not (layout.code / "secrets.env").exists() and not (layout.work / "secrets.env").exists()
    assert record.env_file == str(project / "secrets.env")

    again = replay(engine, store, record.run_id, sink=QUIET)  # the secret is read again from the env file
    assert json.loads((store.layout(again.run_id).output / "env.json").read_text())["HF_TOKEN"].startswith("hf_")
    assert any("read again from" in n for n in again.notes)
    (project / "secrets.env").unlink()
    gone = replay(engine, store, record.run_id, sink=QUIET)
    assert json.loads((store.layout(gone.run_id).output / "env.json").read_text())["HF_TOKEN"] is None
    assert any("cannot restore the redacted variable(s) HF_TOKEN" in n for n in gone.notes)


def test_settings_are_recorded_and_replayed(project, tmp_path, monkeypatch):
    use_host(monkeypatch, "cpu")
    store, engine = FileStore(tmp_path / "store"), FakeEngine()
    image = engine.add_image("img")
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=image, project=project, trace="off",
                                           shm_size="3g", ipc="shareable", user="4242:4242", network="bridge"),
                 sink=QUIET)
    saved = store.read(record.run_id)
    assert (saved.shm_size, saved.ipc, saved.user, saved.user_explicit, saved.network) == (
        "3g", "shareable", "4242:4242", True, "bridge")
    replay(engine, store, record.run_id, sink=QUIET)
    first, second = [spec for call, spec in engine.calls if call == "create"]
    for spec in (first, second):
        assert (spec.shm_size, spec.ipc, spec.user, spec.network) == ("3g", "shareable", "4242:4242", "bridge")


def test_a_default_user_is_not_carried_into_a_replay(project, tmp_path, monkeypatch):
    use_host(monkeypatch, "cpu")
    store, engine = FileStore(tmp_path / "store"), FakeEngine()
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=engine.add_image("img"), project=project,
                                           trace="off"), sink=QUIET)
    assert record.user_explicit is False and record.shm_size and record.ipc == "private"
    data = record.to_dict()
    data["user"] = "1234:1234"  # recorded on another host by another user: the replay runs as this host's rule
    store.write(RunRecord.from_dict(data))
    replay(engine, store, record.run_id, sink=QUIET)
    spec = [spec for call, spec in engine.calls if call == "create"][-1]
    assert spec.user != "1234:1234"


def test_an_older_record_without_the_settings_still_reads():
    data = RunRecord(run_id="20261123T191300123Z-3f9a1c2b").to_dict()
    for key in ("gpus", "shm_size", "ipc", "ulimits", "user_explicit", "env_file"):
        data.pop(key)
    old = RunRecord.from_dict(data)
    assert (old.gpus, old.shm_size, old.ipc, old.ulimits) == ("none", None, None, {})
