"""Run records and the file store: strict records, atomic writes, concurrent writers, listing, CLI errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from envkit.cli import main
from envkit.errors import InvalidRunIdError, RunNotFoundError, StoreError
from envkit.manifest import ManifestEntry
from envkit.store.filestore import FileStore, new_run_id, validate_run_id
from envkit.store.record import SCHEMA_VERSION, RunRecord, Timings

T0 = datetime(2026, 11, 23, 19, 13, 0, 123000, tzinfo=timezone.utc)


def make_record(store: FileStore, **fields: object) -> RunRecord:
    record = RunRecord(run_id=store.create_run(), script="train.py", seed=42, **fields)  # type: ignore[arg-type]
    store.write(record)
    return record


# --- run ids -----------------------------------------------------------------------------------------------------
def test_run_ids_sort_by_time_and_are_unique() -> None:
    assert new_run_id(T0).startswith("20261123T191300123Z-")
    ids = [new_run_id(T0 + timedelta(milliseconds=i)) for i in range(0, 5000, 7)]
    assert sorted(ids) == ids
    same_ms = {new_run_id(T0) for _ in range(2000)}
    assert len(same_ms) == 2000
    for run_id in ids:
        assert validate_run_id(run_id) == run_id


@pytest.mark.parametrize("bad", [
    "", "latest", "../../etc/passwd", "20261123T191300123Z-3f9a1c2b/../x", "20261123T191300123Z-3F9A1C2B",
    "20261123T191300123Z-3f9a1c2b\n", "２０261123T191300123Z-3f9a1c2b", "20261123T191300Z-3f9a1c2b",
    "x" * 500,
])
def test_malformed_run_ids_are_refused_before_any_path(tmp_path: Path, bad: str) -> None:
    store = FileStore(tmp_path / "does-not-exist")
    with pytest.raises(InvalidRunIdError):
        store.read(bad)
    with pytest.raises(InvalidRunIdError):
        store.run_dir(bad)
    assert not (tmp_path / "does-not-exist").exists()


# --- records -----------------------------------------------------------------------------------------------------
def test_record_round_trip_and_redaction(tmp_path: Path) -> None:
    record = RunRecord(
        run_id=new_run_id(T0), status="succeeded", command=["envkit", "run", "--seed", "1", "t.py"], script="t.py",
        seed=1, environment={"HF_TOKEN": "hf_abc", "aws_secret_access_key": "s", "DB_Password": "p",
                             "MY_API_KEY": "k", "PATH": "/usr/bin", "ENVKIT_SEED": "1"},
        outputs=[ManifestEntry("model.pt", 3, "ab" * 32), ManifestEntry("l", 1, "cd" * 32, link="x")],
        timings=Timings(build_s=0.0, run_s=1.25, total_s=2),
    )
    assert record.environment == {"HF_TOKEN": "<redacted>", "aws_secret_access_key": "<redacted>",
                                  "DB_Password": "<redacted>", "MY_API_KEY": "<redacted>", "PATH": "/usr/bin",
                                  "ENVKIT_SEED": "1"}
    data = json.loads(json.dumps(record.to_dict()))
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["outputs"][0] == {"path": "model.pt", "size": 3, "sha256": "ab" * 32}
    assert RunRecord.from_dict(data) == record


@pytest.mark.parametrize(("change", "message"), [
    ({"schema_version": 99}, "schema version 99"),
    ({"schema_version": "1"}, "no valid schema_version"),
    ({"colour": "blue"}, "unknown keys: colour"),
    ({"seed": "42"}, "seed: expected int"),
    ({"status": "done"}, "status is 'done'"),
    ({"image": {"id": "x", "size": 3}}, "image has unknown keys: size"),
    ({"outputs": [{"path": "a"}]}, "expected a manifest entry"),
    ({"timings": {"run_s": True}}, "run_s: expected float"),
    ({"run_id": "../x"}, "malformed run id"),
])
def test_strict_record_reading(change: dict, message: str) -> None:
    data = RunRecord(run_id=new_run_id(T0)).to_dict()
    data.update(change)
    with pytest.raises(StoreError, match=message):
        RunRecord.from_dict(data)


def test_missing_required_key() -> None:
    data = RunRecord(run_id=new_run_id(T0)).to_dict()
    del data["run_id"]
    with pytest.raises(StoreError, match="lacks keys: run_id"):
        RunRecord.from_dict(data)


# --- the store ---------------------------------------------------------------------------------------------------
def test_write_read_list(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = make_record(store)
    second = make_record(store, status="failed", exit_code=1)
    assert store.read(first.run_id) == first
    assert (tmp_path / "runs" / first.run_id / "record.json").is_file()
    listing = store.list()
    assert [s.run_id for s in listing.runs] == [second.run_id, first.run_id]
    assert listing.runs[0].status == "failed" and listing.runs[0].exit_code == 1
    assert listing.broken == []
    assert [s.run_id for s in store.list(limit=1).runs] == [second.run_id]
    with pytest.raises(RunNotFoundError):
        store.read(new_run_id(T0))


def test_listing_skips_and_reports_broken_runs(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    good = make_record(store)
    corrupt = make_record(store)
    (store.run_dir(corrupt.run_id) / "record.json").write_text('{"schema_version": 1, "run_id": ')
    future = make_record(store)
    data = json.loads((store.run_dir(future.run_id) / "record.json").read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    (store.run_dir(future.run_id) / "record.json").write_text(json.dumps(data))
    empty = store.create_run()
    (tmp_path / "runs" / "stray-folder").mkdir()
    listing = store.list()
    assert [s.run_id for s in listing.runs] == [good.run_id]
    reasons = {b.name: b.reason for b in listing.broken}
    assert set(reasons) == {corrupt.run_id, future.run_id, empty, "stray-folder"}
    assert "not valid JSON" in reasons[corrupt.run_id]
    assert "schema version" in reasons[future.run_id]
    with pytest.raises(StoreError, match="has no record"):
        store.read(empty)


def test_index_is_only_a_cache(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    records = [make_record(store) for _ in range(3)]
    # Newest first by id; ids made in the same millisecond order by their random part, not by creation.
    newest_first = sorted((r.run_id for r in records), reverse=True)
    # A record changed behind the store's back (no index line) is read afresh.
    path = store.run_dir(records[0].run_id) / "record.json"
    data = json.loads(path.read_text())
    data["status"] = "interrupted"
    path.write_text(json.dumps(data))
    assert {s.run_id: s.status for s in store.list().runs}[records[0].run_id] == "interrupted"
    # A lost or damaged index changes nothing but speed.
    store.index_path.write_bytes(b"garbage\n[1, 2]\n" + store.index_path.read_bytes()[:-30])
    assert [s.run_id for s in store.list().runs] == newest_first
    # A torn append glued to the next line, and a line whose JSON is damaged inside its braces.
    lines = store.index_path.read_bytes().splitlines(keepends=True)
    store.index_path.write_bytes(lines[-1][:30] + lines[-2] + lines[-1].replace(b'"status": ', b'"status ') + b"\n")
    listing = store.list()
    assert [s.run_id for s in listing.runs] == newest_first
    assert [json.loads(t)["run_id"] for t in listing.summaries_json] == newest_first
    store.index_path.unlink()
    assert [s.status for s in store.list().runs] == ["running", "running", "interrupted"]
    assert store.index_path.exists()


def _writer(root: str, barrier: Any, updates: int) -> None:
    store = FileStore(Path(root))
    run_id = store.create_run()
    barrier.wait()
    for i in range(updates):
        status = "succeeded" if i == updates - 1 else "running"
        store.write(RunRecord(run_id=run_id, status=status, seed=i, notes=["n" * 2000] * (i + 1)))


def test_twenty_concurrent_writer_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(20)
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), barrier, 5)) for _ in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 20
    store = FileStore(tmp_path)
    index_lines = store.index_path.read_bytes().splitlines()
    assert len(index_lines) == 100  # whole lines: no append was interleaved with another
    for line in index_lines:
        version, run_id, key, summary = line.split(b"\t")
        assert json.loads(summary)["run_id"] == run_id.decode()
    listing = store.list()
    assert len(listing.runs) == 20 and listing.broken == []
    for summary in listing.runs:
        record = store.read(summary.run_id)
        assert record.status == "succeeded" and record.seed == 4 and len(record.notes) == 5
    assert not [p for p in tmp_path.rglob("*.tmp")]


# --- failures while writing: real filesystems --------------------------------------------------------------------
@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 256 KiB tmpfs mounted for the test (needs root or CAP_SYS_ADMIN)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_leaves_the_previous_record_and_no_partial_file(tiny_tmpfs: Path) -> None:
    store = FileStore(tiny_tmpfs / "store")
    record = make_record(store)
    before = (store.run_dir(record.run_id) / "record.json").read_bytes()
    fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk, then give back a few KiB
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(tiny_tmpfs / "filler", os.path.getsize(tiny_tmpfs / "filler") - 8192)
    bigger = RunRecord(run_id=record.run_id, status="succeeded", notes=["x" * 100_000])
    with pytest.raises(StoreError) as info:
        store.write(bigger)
    assert "No space left" in info.value.message and "ENVKIT_HOME" in (info.value.hint or "")
    assert info.value.exit_code == 33
    assert (store.run_dir(record.run_id) / "record.json").read_bytes() == before
    assert sorted(p.name for p in store.run_dir(record.run_id).iterdir()) == ["record.json"]
    assert store.read(record.run_id) == record
    assert [s.status for s in store.list().runs] == ["running"]


def test_read_only_store(tiny_tmpfs: Path) -> None:
    store = FileStore(tiny_tmpfs / "store")
    record = make_record(store)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    with pytest.raises(StoreError) as info:
        store.write(RunRecord(run_id=record.run_id, status="failed"))
    assert "read-only" in (info.value.hint or "")
    with pytest.raises(StoreError, match="Read-only"):
        store.create_run()
    assert store.read(record.run_id) == record  # reading still works
    assert [s.run_id for s in store.list().runs] == [record.run_id]


# --- the CLI -------------------------------------------------------------------------------------------------------
def test_cli_runs_and_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path))
    store = FileStore(tmp_path)
    a = make_record(store, status="succeeded", exit_code=0, timings=Timings(total_s=75.0))
    b = make_record(store, status="failed", exit_code=3)
    (tmp_path / "runs" / "junk").mkdir()
    capsys.readouterr()

    assert main(["runs"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["RUN", "ID", "STATUS", "SEED", "DETERMINISM", "SCRIPT", "EXIT", "DURATION", "IMAGE"]
    assert lines[1].split()[:6] == [b.run_id, "failed", "42", "strict", "train.py", "3"]
    assert lines[2].split()[6] == "1m15s"
    assert "skipped junk" in err

    assert main(["runs", "--json", "--limit", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == [b.run_id]

    assert main(["show", a.run_id, "--json"]) == 0
    assert RunRecord.from_dict(json.loads(capsys.readouterr().out)) == a
    assert main(["show", a.run_id]) == 0
    assert f"run {a.run_id}: succeeded (exit 0)" in capsys.readouterr().out


@pytest.mark.parametrize(("run_id", "code", "message"), [
    ("../../etc/passwd", 32, "malformed run id"),
    ("20261123T191300123Z-0000000z", 32, "malformed run id"),
    ("20261123T191300123Z-00000000", 31, "no run 20261123T191300123Z-00000000"),
])
def test_cli_bad_run_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                         run_id: str, code: int, message: str) -> None:
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path))
    assert main(["show", run_id]) == code
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "hint:" in err and "Traceback" not in err


def test_cli_as_a_subprocess(tmp_path: Path) -> None:
    envkit = shutil.which("envkit")
    if envkit is None:
        pytest.skip("the envkit console script is not installed")
    env = {**os.environ, "ENVKIT_HOME": str(tmp_path)}
    proc = subprocess.run([envkit, "show", "nope"], capture_output=True, text=True, env=env)
    assert proc.returncode == 32 and proc.stderr.startswith("error: malformed run id 'nope'")
    proc = subprocess.run([envkit, "runs", "--json"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout) == []
