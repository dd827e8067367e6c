"""The sweep store, a run's metrics file, and the local parallelism bound: pure parts, no engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envkit.errors import StoreError, SweepError, SweepNotFoundError
from envkit.manifest import ManifestEntry
from envkit.store.layout import RunLayout
from envkit.store.metrics import parse_metrics, read_metrics
from envkit.store.sweeps import SweepPlan, SweepRecord, SweepRun, SweepStore, validate_sweep_id
from envkit.sweep.parallel import ASSUMED_JOB_MEMORY, bound_parallel, parse_size

GiB = 1 << 30


def record(sweep_id: str, seeds=(0, 1)) -> SweepRecord:
    return SweepRecord(sweep_id=sweep_id, plan=SweepPlan(script="train.py"), seeds=list(seeds),
                       runs=[SweepRun(i, s) for i, s in enumerate(seeds)])


# --- the sweep store ---------------------------------------------------------------------------------------------
def test_a_sweep_is_written_read_and_listed_newest_first(tmp_path):
    store = SweepStore(tmp_path)
    first, second = store.create(), store.create()
    for sweep_id in (first, second):
        store.write(record(sweep_id))
    assert store.read(first).seeds == [0, 1]
    (store.sweeps_dir / "junk").mkdir()
    (store.sweeps_dir / "20261130T101500123Z-0000000a").mkdir()  # a folder without its record
    records, broken = store.list()
    assert [r.sweep_id for r in records] == sorted([first, second], reverse=True)
    assert sorted(name for name, _ in broken) == ["20261130T101500123Z-0000000a", "junk"]
    assert not list(store.layout(first).root.glob(".*tmp"))  # written atomically, no temp file left


@pytest.mark.parametrize("bad", ["../etc", "2026", "20261130T101500123Z-3F9A1C2B", "x" * 500, None])
def test_malformed_sweep_ids_are_refused_before_they_touch_a_path(tmp_path, bad):
    with pytest.raises(SweepError, match="malformed sweep id") as err:
        SweepStore(tmp_path).read(bad)
    assert "envkit sweeps" in err.value.hint and len(err.value.message) < 100
    with pytest.raises(SweepError):
        validate_sweep_id(bad)


def test_a_missing_sweep_and_a_damaged_record_are_clear_errors(tmp_path):
    store = SweepStore(tmp_path)
    with pytest.raises(SweepNotFoundError):
        store.read("20261130T101500123Z-3f9a1c2b")
    sweep_id = store.create()
    store.layout(sweep_id).record.write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read(sweep_id)
    data = record(sweep_id).to_dict()
    store.layout(sweep_id).record.write_text(json.dumps({**data, "surprise": 1}))
    with pytest.raises(StoreError, match="unknown keys: surprise"):
        store.read(sweep_id)
    store.layout(sweep_id).record.write_text(json.dumps({**data, "schema_version": 9}))
    with pytest.raises(StoreError, match="schema version 9"):
        store.read(sweep_id)
    bad_runs = {**data, "runs": [{"index": 0, "seed": 5, "state": "pending"}]}
    store.layout(sweep_id).record.write_text(json.dumps(bad_runs))
    with pytest.raises(StoreError, match="do not match its seeds"):
        store.read(sweep_id)


def test_task_reports_have_one_writer_each_and_read_back_empty_when_absent(tmp_path):
    store = SweepStore(tmp_path)
    sweep_id = store.create()
    assert store.read_task(sweep_id, 3) == {}
    store.write_task(sweep_id, 3, {"run_id": "20261130T101500123Z-3f9a1c2b", "state": "running"})
    assert store.read_task(sweep_id, 3)["state"] == "running"
    store.layout(sweep_id).task(4).write_text("[1, 2")
    assert store.read_task(sweep_id, 4) == {}


# --- metrics.json ------------------------------------------------------------------------------------------------
def test_metrics_keep_finite_numbers_and_name_what_they_leave_out():
    metrics, notes = parse_metrics({"acc": 0.5, "epochs": 3, "flag": True, "name": "x", "nested": {"a": 1},
                                    "nan": float("nan"), "inf": float("inf"), "huge": 10**400, "": 1})
    assert metrics == {"acc": 0.5, "epochs": 3.0}
    text = " | ".join(notes)
    for name in ("'flag'", "'name'", "'nested'", "'nan'", "'inf'", "'huge'"):
        assert name in text
    assert parse_metrics([1, 2])[0] is None and "not an object" in parse_metrics([1, 2])[1][0]


def test_read_metrics_prefers_the_output_folder_and_never_fails(tmp_path):
    layout = RunLayout(tmp_path)
    layout.output.mkdir()
    layout.work.mkdir()
    (layout.output / "metrics.json").write_text('{"a": 1}')
    (layout.work / "metrics.json").write_text('{"b": 2}')
    both = [ManifestEntry("$ENVKIT_OUTPUT_DIR/metrics.json", 8, "0" * 64), ManifestEntry("metrics.json", 8, "0" * 64)]
    metrics, notes = read_metrics(layout, both)
    assert metrics == {"a": 1.0} and "metrics.json ignored" in notes[0]
    assert read_metrics(layout, []) == (None, [])  # not an output: not read
    (layout.output / "metrics.json").write_text("{torn")
    metrics, notes = read_metrics(layout, both[:1])
    assert metrics is None and "not readable JSON" in notes[0]
    link = [ManifestEntry("$ENVKIT_OUTPUT_DIR/metrics.json", 8, "0" * 64, link="/etc/passwd")]
    assert read_metrics(layout, link)[0] is None
    big = [ManifestEntry("$ENVKIT_OUTPUT_DIR/metrics.json", 10**9, "0" * 64)]
    assert "not read" in read_metrics(layout, big)[1][0]


# --- how many at once ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "size"), [("512m", 512 << 20), ("4g", 4 * GiB), ("4G", 4 * GiB), ("1024", 1024),
                                            ("8k", 8192), ("1.5g", 3 << 29)])
def test_memory_sizes_in_docker_syntax(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "4x", "-1g", "0", "g", "1e9"])
def test_bad_memory_sizes(bad):
    with pytest.raises(SweepError, match="is not a size"):
        parse_size(bad)


def test_parallelism_is_bounded_by_cores_per_thread_and_by_memory():
    assert bound_parallel(None, 16, threads=1, memory=None, cores=8, available=64 * GiB).runs == 8
    assert bound_parallel(None, 16, threads=4, memory=None, cores=8, available=64 * GiB).runs == 2
    assert bound_parallel(None, 3, threads=1, memory=None, cores=8, available=64 * GiB).runs == 3
    by_memory = bound_parallel(8, 16, threads=1, memory="4g", cores=8, available=10 * GiB)
    assert by_memory.runs == 2 and "cut to 2" in by_memory.note and "GiB per run" in by_memory.note
    assumed = bound_parallel(8, 16, threads=1, memory=None, cores=8, available=3 * ASSUMED_JOB_MEMORY)
    assert assumed.runs == 3 and "assumed; give --memory" in assumed.note
    by_cores = bound_parallel(5, 16, threads=1, memory=None, cores=2, available=64 * GiB)
    assert by_cores.runs == 2 and "2 usable cores" in by_cores.note
    assert bound_parallel(1, 16, threads=1, memory=None, cores=2, available=64 * GiB).note is None
    assert bound_parallel(None, 4, threads=1, memory="64g", cores=2, available=GiB).runs == 1  # never zero
    with pytest.raises(SweepError, match="--parallel 0"):
        bound_parallel(0, 4, threads=1, memory=None)


def test_the_bound_uses_what_this_process_may_use(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1, 2})
    assert bound_parallel(None, 16, threads=1, memory=None, available=64 * GiB).cores == 3


def test_memavailable_is_read_from_meminfo(tmp_path):
    from envkit.sweep.parallel import available_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
    assert available_memory(meminfo) == 20000000 * 1024
    assert available_memory(Path(tmp_path / "missing")) is None


def test_a_sweep_is_named_by_its_id_a_unique_prefix_or_last(tmp_path):
    store = SweepStore(tmp_path)
    with pytest.raises(SweepNotFoundError, match="no sweeps"):
        store.resolve("last")
    first, second = store.create(), store.create()
    assert store.resolve(second) == second and store.resolve("last") == max(first, second)
    assert store.resolve(first[-8:]) == first and store.resolve(first[-8:-2]) == first
    with pytest.raises(SweepError, match="matches 2 sweeps") as err:
        store.resolve(first[:8])  # the same day
    assert "envkit sweeps" in err.value.hint
    with pytest.raises(SweepNotFoundError):
        store.resolve("19990101T")
    with pytest.raises(SweepError, match="malformed sweep id"):
        store.resolve("../etc")
