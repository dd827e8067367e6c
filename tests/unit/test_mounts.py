"""Mounts (issue 12): a record from elsewhere never chooses host paths, and no job sees the engine's socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from envkit.errors import InputChangedError, MountError
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.mounts import check_source, check_target, parse_mount
from envkit.run.runner import RunRequest, run
from envkit.store.bundle import export_run, import_bundle
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, JobContext, Outcome

QUIET = Sink(None, None)


def reads_data(ctx: JobContext) -> Outcome:
    total = sum(p.stat().st_size for p in ctx.path("/data").rglob("*") if p.is_file())
    ctx.path("/work/size.txt").write_text(str(total))
    return Outcome(0)


@pytest.fixture()
def recorded(tmp_path):
    """A run with one input, made here, then exported and imported into another store (as from a stranger)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "read.py").write_text("pass\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.bin").write_bytes(b"12345")
    engine = FakeEngine()
    image = engine.add_image("img", reads_data)
    home = FileStore(tmp_path / "home")
    record = run(engine, home, RunRequest(script="read.py", seed=1, image=image, project=project, trace="off",
                                           mounts=[f"{data}:/data"]), sink=QUIET)
    bundle = tmp_path / "run.tar.gz"
    export_run(home, record.run_id, bundle)
    other = FileStore(tmp_path / "other")
    import_bundle(other, bundle)
    return engine, home, other, record.run_id, data


def test_a_run_made_here_replays_with_its_recorded_inputs(recorded):
    engine, home, _, run_id, _ = recorded
    assert replay(engine, home, run_id, sink=QUIET).verdict.kind == "IDENTICAL"


def test_an_imported_runs_mounts_are_never_taken_from_its_record(recorded, tmp_path):
    engine, _, other, run_id, data = recorded
    record = other.read(run_id)
    record.mounts = [{"source": "/root", "target": "/data"}, {"source": "/var/run", "target": "/sock"}]
    other.write(record)  # what a crafted bundle's record would say
    with pytest.raises(MountError, match="imported from elsewhere") as refused:
        replay(engine, other, run_id, sink=QUIET)
    assert "/data" in refused.value.message and "/sock" in refused.value.message
    assert [r.run_id for r in other.list().runs] == [run_id]  # nothing ran
    with pytest.raises(MountError, match="system folder"):
        replay(engine, other, run_id, sink=QUIET, mount_overrides={"/data": data, "/sock": Path("/var/run")})


def test_an_imported_run_replays_with_the_inputs_given_here(recorded):
    engine, _, other, run_id, data = recorded
    result = replay(engine, other, run_id, sink=QUIET, mount_overrides={"/data": data})
    assert result.verdict.kind == "IDENTICAL"


def test_an_input_with_an_extra_file_is_refused(recorded):
    engine, home, _, run_id, data = recorded
    (data / "new.bin").write_bytes(b"0")
    with pytest.raises(InputChangedError, match="new.bin was not there"):
        replay(engine, home, run_id, sink=QUIET)


def test_sockets_devices_and_system_folders_are_never_mounted(tmp_path):
    sock_path = tmp_path / "folder" / "engine.sock"
    sock_path.parent.mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        with pytest.raises(MountError, match="socket"):
            check_source(sock_path)
        with pytest.raises(MountError, match="holds a socket"):
            check_source(sock_path.parent)
    finally:
        server.close()
    for path in ("/", "/proc", "/var/run", "/run", "/dev", "/etc"):
        with pytest.raises(MountError, match="system folder"):
            check_source(Path(path))
    with pytest.raises(MountError):
        check_source(Path("/dev/null"))


@pytest.mark.parametrize("target", ["/", "/etc", "/usr/lib", "/opt/envkit/venv", "/work", "/envkit/meta/x", "data",
                                    "/data/../etc", "/data//x"])
def test_targets_that_would_cover_the_image_or_envkit_are_refused(target):
    with pytest.raises(MountError):
        check_target(target)


def test_a_good_mount_parses(tmp_path):
    (tmp_path / "d").mkdir()
    m = parse_mount(f"{tmp_path / 'd'}:/data/")
    assert m.target == "/data" and m.source == tmp_path / "d" and m.read_only
