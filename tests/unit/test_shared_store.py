"""One store for several hosts (ENVKIT_HOME on a shared filesystem): ids reserved exclusively, records replaced whole,
the index appended and compacted under its lock, and never more than a cache.

The engines-and-hosts version of this is tests/integration/test_mission.py::test_two_engines_share_one_store.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
from pathlib import Path

import pytest

from envkit.errors import StoreError
from envkit.store import filestore
from envkit.store.filestore import INDEX_LOCK, FileStore
from envkit.store.record import RunRecord


def _host(root: str, barrier, runs: int, queue) -> None:
    """One "host": its own FileStore object on the shared folder, creating runs and rewriting their records."""
    store = FileStore(Path(root))
    barrier.wait(30)
    made = []
    for i in range(runs):
        run_id = store.create_run()
        store.write(RunRecord(run_id=run_id, status="running", seed=i, script="train.py"))
        store.list()  # listings interleave with the writes, as `envkit runs` on another host would
        store.write(RunRecord(run_id=run_id, status="succeeded", seed=i, script="train.py", exit_code=0))
        made.append(run_id)
    queue.put(made)


def test_hosts_writing_one_store_at_once_keep_every_run_intact(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    hosts, runs = 6, 15
    barrier, queue = ctx.Barrier(hosts), ctx.Queue()
    procs = [ctx.Process(target=_host, args=(str(tmp_path), barrier, runs, queue)) for _ in range(hosts)]
    for p in procs:
        p.start()
    made = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * hosts
    ids = [run_id for batch in made for run_id in batch]
    assert len(set(ids)) == hosts * runs  # no id handed out twice
    store = FileStore(tmp_path)
    listing = store.list()
    assert listing.broken == [] and sorted(r.run_id for r in listing.runs) == sorted(ids)
    assert {r.status for r in listing.runs} == {"succeeded"}
    for line in store.index_path.read_bytes().splitlines():  # whole lines only
        version, run_id, _key, summary = line.split(b"\t")
        assert version == b"1" and json.loads(summary)["run_id"] == run_id.decode()
    assert not list(tmp_path.rglob("*.tmp"))


def test_compaction_keeps_what_others_appended_meanwhile(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    listed = store.create_run()
    store.write(RunRecord(run_id=listed, seed=1))
    other = store.create_run()  # written by another host after this one's listing began
    store.write(RunRecord(run_id=other, seed=2))
    gone = store.create_run()
    store.write(RunRecord(run_id=gone, seed=3))
    os.rename(store.run_dir(gone), tmp_path / "elsewhere")  # a run removed since
    store._compact([listed], [])
    kept = [line.split(b"\t")[1].decode() for line in store.index_path.read_bytes().splitlines()]
    assert sorted(kept) == sorted([listed, other])


def test_a_lock_held_elsewhere_delays_the_index_but_never_blocks_a_run(tmp_path: Path, monkeypatch) -> None:
    store = FileStore(tmp_path)
    run_id = store.create_run()
    monkeypatch.setattr(filestore, "_LOCK_WAIT_S", 0.05)
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path / INDEX_LOCK), held, release))
    holder.start()
    try:
        assert held.wait(30)
        store.write(RunRecord(run_id=run_id, status="succeeded", seed=1))  # goes ahead once the wait is over
    finally:
        release.set()
        holder.join(30)
    assert store.read(run_id).status == "succeeded"
    assert [r.run_id for r in store.list().runs] == [run_id]


def _hold_lock(path: str, held, release) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    held.set()
    release.wait(30)
    os.close(fd)


def test_run_ids_are_reserved_exclusively_and_the_search_is_bounded(tmp_path: Path, monkeypatch) -> None:
    store = FileStore(tmp_path)
    taken = store.create_run()
    monkeypatch.setattr(filestore, "new_run_id", lambda now=None: taken)  # a filesystem that always says "exists"
    with pytest.raises(StoreError, match="fresh ids were all taken"):
        store.create_run()
