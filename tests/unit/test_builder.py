"""The assembly workflow against the in-memory engine: one lock, one image ID, whoever builds it; the lock's expected
ID compared, recorded (--pin) and checked (--check); the base pulled by digest or refused in one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import BuildError, ImageMismatchError, ImageNotFoundError, RegistryError, SpecError
from envkit.image import buildcache, builder, render
from envkit.image.builder import build_image
from envkit.image.expected import DIFFERS, MATCHES, UNPINNED
from envkit.lock.model import BaseImage, Lockfile, PinnedPackage, Platform, load_lockfile, write_lockfile

from .fakes import FakeEngine, JobContext, Outcome, venv_install


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")  # the test's locks name their own local wheels


def lock_on(tmp_path: Path, base: BaseImage, version: str = "1.16.0") -> Lockfile:
    wheel = tmp_path / f"six-{version}-py2.py3-none-any.whl"
    wheel.write_bytes(b"six " + version.encode())
    return Lockfile(
        name="tiny", python="3.11", platform=Platform("linux", "x86_64", "x86_64-manylinux_2_28"), base=base,
        requirements=("six",), sources={}, environment={"PYTHONHASHSEED": "0"}, generated_by="test",
        packages=(PinnedPackage("six", version, wheel.name, wheel.as_uri(),
                                hashlib.sha256(wheel.read_bytes()).hexdigest()),),
    ).sealed()


def local_base(engine: FakeEngine) -> BaseImage:
    return BaseImage(ref="base", digest=engine.add_image("base", job=venv_install), python="3.11.2")


def test_two_engines_with_their_own_caches_build_one_image_id(tmp_path, monkeypatch):
    ids = []
    for host in ("a", "b"):
        monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / f"cache-{host}"))
        engine = FakeEngine()
        lock = lock_on(tmp_path, local_base(engine))
        result = build_image(engine, lock)
        assert result.image_id in engine.images  # the engine's load gave the ID envkit computed
        ids.append((result.image_id, result.venv_layer))
    assert ids[0] == ids[1]


def test_the_other_cpu_profile_reuses_the_venv_layer_and_sends_only_a_config(tmp_path):
    engine = FakeEngine()
    lock = lock_on(tmp_path, local_base(engine))
    native = build_image(engine, lock, "native")
    portable = build_image(engine, lock, "portable")
    assert portable.image_id != native.image_id and portable.venv_layer == native.venv_layer
    assert [c for c, _ in engine.calls].count("create") == 1  # one venv install for both
    loads = [size for c, size in engine.calls if c == "load"]
    assert loads[-1] < 20_000  # the config and the manifest: the engine has every layer


def test_pin_then_build_matches_and_a_changed_bootstrap_says_what_differs(tmp_path, monkeypatch, capsys):
    engine = FakeEngine()
    monkeypatch.setattr("envkit.engine.connect", lambda timeout=600: engine)
    path = tmp_path / "tiny.lock.yaml"
    write_lockfile(lock_on(tmp_path, local_base(engine)), path)
    before = load_lockfile(path)
    assert main(["build", str(path), "--pin"]) == 0
    pinned = load_lockfile(path)
    assert pinned.content_sha256 == before.content_sha256 and set(pinned.images) == {"native", "portable"}
    assert build_image(engine, pinned).comparison.status == MATCHES

    files = render.in_image_files()
    files["envkit_injob/bootstrap.py"] += b"\n# another envkit\n"
    monkeypatch.setattr(render, "in_image_files", lambda: files)
    changed = build_image(engine, pinned)
    assert changed.comparison.status == DIFFERS
    reasons = " ".join(changed.comparison.reasons)
    assert "envkit's recipe differs" in reasons and "the venv layer differs" in reasons
    assert "base layer" not in reasons
    capsys.readouterr()
    assert main(["build", str(path)]) == 0  # a differing ID is said, not an error, without --check
    err = capsys.readouterr().err
    assert "differs from the lock's" in err and "envkit build LOCK --pin" in err


def test_a_lock_without_expected_ids_says_how_to_record_them(tmp_path):
    engine = FakeEngine()
    result = build_image(engine, lock_on(tmp_path, local_base(engine)))
    assert result.comparison.status == UNPINNED


def test_check_rebuilds_and_exits_29_when_the_lock_expects_another_image(tmp_path, monkeypatch, capsys):
    engine = FakeEngine()
    monkeypatch.setattr("envkit.engine.connect", lambda timeout=600: engine)
    path = tmp_path / "tiny.lock.yaml"
    write_lockfile(lock_on(tmp_path, local_base(engine)), path)
    assert main(["build", str(path), "--pin"]) == 0
    capsys.readouterr()
    creates = [c for c, _ in engine.calls].count("create")
    assert main(["build", str(path), "--check", "--json"]) == 0  # rebuilt from nothing: the same ID
    out = json.loads(capsys.readouterr().out)
    assert out["lock"]["status"] == MATCHES and out["check"]["previous"] == out["image_id"]
    assert [c for c, _ in engine.calls].count("create") == creates + 1  # the venv was installed again

    lock = load_lockfile(path)
    write_lockfile(lock.with_images({**lock.images, "native": "sha256:" + "0" * 64}, lock.image_parts), path)
    rc = main(["build", str(path), "--check"])
    out, err = capsys.readouterr()
    assert rc == ImageMismatchError.exit_code
    assert "error: --check: the image rebuilt from nothing" in err and "sha256:000000000000" in err
    assert out.strip() in engine.images  # the image is kept


def test_a_registry_base_is_pulled_by_digest_and_a_gone_digest_is_one_line(tmp_path):
    engine = FakeEngine()
    iid = engine.add_image("python", job=venv_install)
    config = engine.configs[iid]
    del engine.images[iid]
    digest = "sha256:" + "d" * 64
    engine.registries["127.0.0.1:5000"] = {f"127.0.0.1:5000/python@{digest}": iid}
    base = BaseImage(ref="127.0.0.1:5000/python:3.11", digest=digest, python="3.11.2", kind="registry",
                     image_id=iid)
    result = build_image(engine, lock_on(tmp_path, base))
    assert ("pull", f"127.0.0.1:5000/python@{digest}") in engine.calls  # by digest, the tag dropped
    assert result.base_layers == json.loads(config)["rootfs"]["diff_ids"]

    gone = BaseImage(ref="127.0.0.1:5000/python:3.11", digest="sha256:" + "e" * 64, python="3.11.2", kind="registry")
    with pytest.raises(RegistryError) as err:
        build_image(engine, lock_on(tmp_path, gone, "1.17.0"))
    assert "is gone from its registry" in err.value.message and "lock the spec again" in err.value.hint


def test_a_registry_base_locked_unverified_is_checked_for_its_python(tmp_path):
    engine = FakeEngine()
    iid = engine.add_image("python312", job=venv_install)
    engine.run_output = lambda spec: b"3.12\n"  # the probe of its python3
    engine.registries["r.example"] = {f"r.example/python@sha256:{'d' * 64}": iid}
    del engine.images[iid]
    base = BaseImage(ref=f"r.example/python@sha256:{'d' * 64}", digest="sha256:" + "d" * 64, python="3.11",
                     kind="registry")
    with pytest.raises(SpecError, match="runs Python 3.12, the lock tiny is for 3.11"):
        build_image(engine, lock_on(tmp_path, base))


def test_a_local_base_that_is_gone_says_it_builds_only_where_it_exists(tmp_path):
    engine = FakeEngine()
    base = BaseImage(ref="envkit/base:old", digest="sha256:" + "c" * 64, python="3.11.2")
    with pytest.raises(ImageNotFoundError) as err:
        build_image(engine, lock_on(tmp_path, base))
    assert "builds only where that image exists" in err.value.message and "envkit lock" in err.value.hint


def test_a_failed_venv_install_shows_pips_words(tmp_path):
    engine = FakeEngine()

    def failing(ctx: JobContext) -> Outcome:
        return Outcome(exit_code=1, stderr=b"Processing wheels\nERROR: six-1.16.0 is not a supported wheel\n")

    base = BaseImage(ref="base", digest=engine.add_image("base", job=failing), python="3.11.2")
    with pytest.raises(BuildError) as err:
        build_image(engine, lock_on(tmp_path, base))
    assert "installing the venv failed (exit 1): ERROR: six-1.16.0 is not a supported wheel" in err.value.message
    assert not list((tmp_path / "cache" / "tmp").iterdir())  # the build folder is gone


def test_the_build_map_is_envkits_own(tmp_path):
    engine = FakeEngine()
    lock = lock_on(tmp_path, local_base(engine))
    result = build_image(engine, lock)
    entry = json.loads((tmp_path / "cache" / "builds" / f"{result.build_key}.json").read_text())
    assert entry["image_id"] == result.image_id and entry["venv_layer"] == result.venv_layer
    assert buildcache.cached_image(engine, result.build_key).id == result.image_id


def test_replay_rebuild_says_the_rebuilt_image_is_the_recorded_one(tmp_path):
    from envkit.replay import replay
    from envkit.run.executor import Sink
    from envkit.run.runner import RunRequest, run
    from envkit.store.filestore import FileStore

    engine, store = FakeEngine(), FileStore(tmp_path / "store")
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("pass\n")
    path = tmp_path / "tiny.lock.yaml"
    write_lockfile(lock_on(tmp_path, local_base(engine)), path)

    def job(ctx: JobContext) -> Outcome:
        ctx.path("/work/out.txt").write_text(ctx.env["ENVKIT_SEED"])
        return Outcome()

    engine.jobs[build_image(engine, load_lockfile(path)).image_id] = job  # what the image runs, by its ID
    original = run(engine, store, RunRequest(script="train.py", seed=1, lock=path, project=project, trace="off"),
                   sink=Sink(None, None))
    del engine.images[original.image.id]  # the image is gone from this engine
    result = replay(engine, store, original.run_id, rebuild=True, sink=Sink(None, None))
    assert result.verdict.kind == "IDENTICAL"
    assert result.verdict.image == {"recorded": original.image.id, "rebuilt": original.image.id, "same": True}
    assert store.read(result.run_id).verdict["image"]["same"] is True
    assert "is the recorded image (the replay ran on it)" in result.notes[0]


# --- a lock resolved once per lock and envkit -------------------------------------------------------------------------
def test_a_run_finds_a_locks_image_again_without_reading_the_lock(tmp_path, monkeypatch):
    """`envkit run --lock` remembers what the lock's bytes resolved to under this envkit; the next run takes the
    image through the build map without parsing or checking the lock again. Other bytes, or the image gone from the
    engine, go the whole way."""
    from envkit.lock import model
    from envkit.run.images import resolve_image

    engine = FakeEngine()
    lock = lock_on(tmp_path, local_base(engine))
    path = tmp_path / "tiny.lock.yaml"
    write_lockfile(lock, path)
    first = resolve_image(engine, tmp_path, path, None, "native")
    assert first.lock.sha256 == lock.content_sha256 and first.lock_text == path.read_text()

    def not_read(_path):
        raise AssertionError("the lock was read again")

    monkeypatch.setattr(model, "load_lockfile", not_read)
    again = resolve_image(engine, tmp_path, path, None, "native")
    assert (again.id, again.ref, again.lock, again.cuda, again.lock_text) == \
        (first.id, first.ref, first.lock, first.cuda, first.lock_text)
    with pytest.raises(AssertionError, match="read again"):  # the other CPU profile is another resolution
        resolve_image(engine, tmp_path, path, None, "portable")
    path.write_text(path.read_text() + "# a comment changes the bytes, not the lock\n")
    with pytest.raises(AssertionError, match="read again"):
        resolve_image(engine, tmp_path, path, None, "native")
    path.write_text(path.read_text().rsplit("# a comment", 1)[0])
    assert resolve_image(engine, tmp_path, path, None, "native").id == first.id
    del engine.images[first.id]
    with pytest.raises(AssertionError, match="read again"):
        resolve_image(engine, tmp_path, path, None, "native")


def test_a_damaged_or_forged_resolution_is_a_miss(tmp_path):
    good = buildcache.ResolvedLock("tiny", "a" * 64, "b" * 64, f"envkit/tiny:{'b' * 12}", None)
    key = buildcache.resolved_key(b"lock bytes", "native")
    buildcache.remember_resolved(key, good)
    assert buildcache.read_resolved(key) == good
    assert key != buildcache.resolved_key(b"lock bytes", "portable") != buildcache.resolved_key(b"other", "native")
    entry = tmp_path / "cache" / "locks" / f"{key}.json"
    for damaged in ("{torn", json.dumps({**json.loads(entry.read_text()), "tag": "evil/tag:latest"}),
                    json.dumps({**json.loads(entry.read_text()), "build_key": "../../etc"}),
                    json.dumps({**json.loads(entry.read_text()), "extra": 1}), "[]"):
        entry.write_text(damaged)
        assert buildcache.read_resolved(key) is None
