"""Pipelines of runs on the in-memory engine: `--input RUN:PATH[:DEST]` takes an earlier run's recorded output,
checked against its record, read-only, recorded as lineage; a mount point is never an output; replay checks the
input's hash, and `--upstream` replays the chain in order on the replayed outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from envkit.errors import InputChangedError, MountError, UpstreamError
from envkit.lineage import chain_order, replay_chain
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.inputs import parse_input
from envkit.run.runner import RunRequest, run
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord, Upstream

from .fakes import FakeEngine, JobContext, Outcome

QUIET = Sink(None, None)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    for name in ("stage1.py", "stage2.py", "stage3.py"):
        (p / name).write_text("")
    return p


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def stage1(ctx: JobContext) -> Outcome:
    """Writes a file and a folder of outputs that depend on the seed only."""
    out = ctx.path("/work/out")
    out.mkdir(exist_ok=True)
    (out / "a.bin").write_bytes(ctx.env["ENVKIT_SEED"].encode() * 3)
    (out / "b.bin").write_bytes(b"b")
    ctx.path("/work/data.txt").write_text(f"data {ctx.env['ENVKIT_SEED']}")
    ctx.path("/envkit/output/metrics.json").write_text("{}")
    return Outcome(0)


def stage2(ctx: JobContext) -> Outcome:
    """Reads stage 1's data where stage 1 wrote it, and the folder at /in; writes its result."""
    data = ctx.path("/work/data.txt").read_text()
    names = sorted(os.listdir(ctx.path("/in"))) if any(m.target == "/in" for m in ctx.spec.mounts) else []
    ctx.path("/work/result.txt").write_text(f"{data.upper()} {names}")
    return Outcome(0)


class Jobs:
    """One image whose job is chosen by the script the container runs."""

    def __init__(self, **jobs):
        self.jobs = jobs

    def __call__(self, ctx: JobContext) -> Outcome:
        return self.jobs[ctx.spec.command[1].removesuffix(".py")](ctx)


@pytest.fixture()
def engine_image():
    engine = FakeEngine()
    return engine, engine.add_image("img", Jobs(stage1=stage1, stage2=stage2, stage3=stage2))


def go(engine, store, project, image, script, inputs=(), seed=5):
    return run(engine, store, RunRequest(script=script, seed=seed, image=image, project=project, trace="off",
                                         inputs=list(inputs)), sink=QUIET)


def test_an_input_from_an_earlier_run_is_checked_mounted_read_only_and_recorded(project, store, engine_image):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    second = go(engine, store, project, image, "stage2.py", [f"{first.run_id[:12]}:data.txt", "last:out/:/in"])
    spec = [arg for call, arg in engine.calls if call == "create"][-1]
    mounts = {m.target: m for m in spec.mounts}
    assert mounts["/work/data.txt"].read_only and mounts["/in"].read_only
    assert mounts["/work/data.txt"].source == store.layout(first.run_id).work / "data.txt"
    assert [(u.run_id, u.path, u.target) for u in second.upstream] == [(first.run_id, "data.txt", "/work/data.txt"),
                                                                      (first.run_id, "out", "/in")]
    assert second.upstream[0].sha256 == next(e.sha256 for e in first.outputs if e.path == "data.txt")
    assert {e.path for e in second.inputs} == {"/work/data.txt", "/in/a.bin", "/in/b.bin"}
    # The mount point inside the working copy is not an output; only what the job wrote is.
    assert [e.path for e in second.outputs] == ["result.txt"]
    assert not (store.layout(second.run_id).work / "data.txt").exists()
    assert store.layout(second.run_id).work.joinpath("result.txt").read_text() == "DATA 5 ['a.bin', 'b.bin']"
    record = RunRecord.from_dict(json.loads(store.layout(second.run_id).record.read_text()))
    assert record.upstream == second.upstream


@pytest.mark.parametrize(("text", "error", "words"), [
    ("last:missing.txt", UpstreamError, "missing.txt is not an output of run"),
    ("last", UpstreamError, "is not RUN:PATH"),
    ("last:../x", UpstreamError, "is not RUN:PATH"),
    ("last:data.txt:/work", MountError, "reserved by envkit"),
    ("last:data.txt:/etc/x", MountError, "would cover the image's /etc"),
    ("last:$ENVKIT_OUTPUT_DIR", UpstreamError, "needs a DEST"),
])
def test_a_bad_input_is_one_clear_error(project, store, engine_image, text, error, words):
    engine, image = engine_image
    go(engine, store, project, image, "stage1.py")
    with pytest.raises(error, match=words.replace("$", r"\$")):
        go(engine, store, project, image, "stage2.py", [text])


def test_an_output_changed_after_its_run_or_a_failed_run_is_refused(project, store, engine_image):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    (store.layout(first.run_id).work / "out" / "extra.txt").write_text("planted")
    with pytest.raises(InputChangedError, match="holds extra.txt"):
        go(engine, store, project, image, "stage2.py", ["last:out/:/in"])
    (store.layout(first.run_id).work / "data.txt").write_text("edited")
    with pytest.raises(InputChangedError, match="changed since the run recorded it"):
        go(engine, store, project, image, "stage2.py", ["last:data.txt"])
    engine.jobs[image] = lambda ctx: Outcome(1)
    go(engine, store, project, image, "stage1.py")
    with pytest.raises(UpstreamError, match="failed .exit 1.: its outputs are not taken"):
        go(engine, store, project, image, "stage2.py", ["last:data.txt"])


def test_replay_checks_the_input_still_has_its_recorded_hash(project, store, engine_image):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    second = go(engine, store, project, image, "stage2.py", [f"{first.run_id}:data.txt"])
    assert replay(engine, store, second.run_id, sink=QUIET).verdict.kind == "IDENTICAL"
    (store.layout(first.run_id).work / "data.txt").write_text("edited")
    with pytest.raises(InputChangedError, match=f"output data.txt of run {first.run_id}"):
        replay(engine, store, second.run_id, sink=QUIET)


def test_replay_upstream_replays_the_chain_in_order_on_the_replayed_outputs(project, store, engine_image):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    second = go(engine, store, project, image, "stage2.py", [f"{first.run_id}:data.txt"])
    third = go(engine, store, project, image, "stage3.py", [f"{second.run_id}:result.txt:/work/data.txt",
                                                            f"{first.run_id}:out/:/in"])
    assert chain_order(store, third.run_id) == [first.run_id, second.run_id, third.run_id]  # first once
    chain = replay_chain(engine, store, third.run_id, sink=QUIET)
    assert [r.original.run_id for r in chain.results] == [first.run_id, second.run_id, third.run_id]
    assert [r.verdict.kind for r in chain.results] == ["IDENTICAL"] * 3 and chain.exit_code == 0
    replays = {r.original.run_id: r.record for r in chain.results}
    # Each downstream replay read its upstream's replay, not the original run's files.
    assert [u.run_id for u in replays[third.run_id].upstream] == [replays[second.run_id].run_id,
                                                                  replays[first.run_id].run_id]
    assert replays[second.run_id].upstream[0].run_id == replays[first.run_id].run_id


def test_an_upstream_replay_that_diverges_stops_the_chain(project, store, engine_image):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    second = go(engine, store, project, image, "stage2.py", [f"{first.run_id}:data.txt"])

    def drifting(ctx: JobContext) -> Outcome:
        ctx.path("/work/data.txt").write_text(os.urandom(4).hex())
        return Outcome(0)

    engine.jobs[image].jobs["stage1"] = drifting
    chain = replay_chain(engine, store, second.run_id, sink=QUIET)
    assert [r.original.run_id for r in chain.results] == [first.run_id]
    assert chain.stopped_at == first.run_id and chain.exit_code == 3


def test_an_upstream_missing_from_the_store_is_named(project, store, engine_image, tmp_path):
    engine, image = engine_image
    first = go(engine, store, project, image, "stage1.py")
    second = go(engine, store, project, image, "stage2.py", [f"{first.run_id}:data.txt"])
    other = FileStore(tmp_path / "elsewhere")
    import shutil

    shutil.copytree(store.run_dir(second.run_id), other.run_dir(second.run_id))
    with pytest.raises(UpstreamError, match=f"run {first.run_id} is not in this store"):
        replay(engine, other, second.run_id, sink=QUIET)
    with pytest.raises(UpstreamError, match=f"run {first.run_id}, upstream of {second.run_id}"):
        chain_order(other, second.run_id)
    data = tmp_path / "data.txt"
    data.write_text("data 5")  # the same bytes, given by hand
    result = replay(engine, other, second.run_id, sink=QUIET, mount_overrides={"/work/data.txt": data})
    assert result.verdict.kind == "IDENTICAL"


def test_input_syntax():
    assert parse_input("last:model.pt") == ("last", "model.pt", None)
    assert parse_input("2026:out/:/data") == ("2026", "out", "/data")
    assert parse_input("abcd:$ENVKIT_OUTPUT_DIR/m.json:/m.json") == ("abcd", "$ENVKIT_OUTPUT_DIR/m.json", "/m.json")
    assert parse_input("abcd:a:b.txt") == ("abcd", "a:b.txt", None)


def test_a_record_naming_an_unsafe_upstream_is_refused():
    from envkit.errors import StoreError

    with pytest.raises(StoreError, match="malformed upstream link"):
        RunRecord(run_id="20261123T200913164Z-af017140",
                  upstream=[Upstream("20261123T200913164Z-af017140", "../../etc/passwd", "/x", "0" * 64)])


def test_a_placeholder_left_at_a_mount_point_is_never_an_output(project, store, engine_image, monkeypatch):
    """Docker leaves an empty file where a file is mounted into the working copy; envkit makes and removes it, and
    even when it stays (here: removal disabled) it is not an output."""
    from envkit.run import executor

    engine, image = engine_image
    go(engine, store, project, image, "stage1.py")
    monkeypatch.setattr(executor, "remove_mount_points", lambda created: None)
    second = go(engine, store, project, image, "stage2.py", ["last:data.txt", "last:$ENVKIT_OUTPUT_DIR:/in"])
    assert (store.layout(second.run_id).work / "data.txt").stat().st_size == 0  # the placeholder is there
    assert [e.path for e in second.outputs] == ["result.txt"]
    assert {e.path for e in second.inputs} == {"/work/data.txt", "/in/metrics.json"}


def test_an_output_dir_file_is_an_input_too(project, store, engine_image):
    engine, image = engine_image
    go(engine, store, project, image, "stage1.py")
    third = go(engine, store, project, image, "stage2.py", ["last:data.txt", "last:$ENVKIT_OUTPUT_DIR/metrics.json"])
    assert [u.target for u in third.upstream] == ["/work/data.txt", "/work/metrics.json"]
