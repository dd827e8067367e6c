"""Runs through Debian's docker-registry on 127.0.0.1: artifacts pushed and pulled byte for byte, a stable digest,
and a registry that lies (altered blobs, a substituted manifest, hostile names, oversized content) refused in one line.

The registry's storage is edited on disk to play the lying registry: docker-registry 2.8 serves what its files hold
without checking them against their digests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from envkit.errors import BundleError, RegistryError, RunNotFoundError, StoreError
from envkit.manifest import manifest
from envkit.run.snapshot import snapshot
from envkit.store.filestore import FileStore
from envkit.store.oci import canonical_manifest, pull_artifact, push_artifact
from envkit.store.ociclient import OCI_MANIFEST, RegistryClient
from envkit.store.record import CodeInfo, ImageInfo, RunRecord
from envkit.store.registry import pull_run, push_run, resolve_run, run_contents
from envkit.store.verify import check_run_files

from .conftest import envkit, free_port

OUTPUT = "$ENVKIT_OUTPUT_DIR/"


def blob_data(session_dir: Path, digest: str) -> Path:
    """The file docker-registry keeps a blob (or a manifest) in."""
    hexd = digest.removeprefix("sha256:")
    return session_dir / "registry" / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"


def get_manifest(ref: str) -> dict:
    registry, rest = ref.split("/", 1)
    repo, digest = rest.split("@")
    with RegistryClient(registry) as client:
        return json.loads(client.get_manifest(repo, digest, 1 << 22))


def layer_digest(ref: str, name: str) -> str:
    (layer,) = [x for x in get_manifest(ref)["layers"] if x["annotations"]["org.opencontainers.image.title"] == name]
    return layer["digest"]


@pytest.fixture
def files(tmp_path) -> list[tuple[str, Path]]:
    """A few files with content of their own (each test its own blobs: altering one must not touch another's)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "train.py").write_text(f"print('train')  # {os.urandom(8).hex()}\n")
    (src / "train.py").chmod(0o755)
    (src / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (src / "empty").write_bytes(b"")
    shutil.copy(src / "train.py", src / "copy.py")  # the same content twice: one blob
    return [("train.py", src / "train.py"), ("sub/weights.bin", src / "sub" / "weights.bin"),
            ("empty", src / "empty"), ("copy.py", src / "copy.py")]


def test_push_then_pull_gives_the_same_bytes_and_names(registry, files, tmp_path):
    ref = push_artifact(f"{registry}/envkit-test/art", files, {"io.envkit.run.id": "x"}, config=b'{"a":1}',
                        config_media_type="application/vnd.envkit.test.config.v1+json")
    assert ref.startswith(f"{registry}/envkit-test/art@sha256:")
    pulled = pull_artifact(ref, tmp_path / "fresh", 10**7, 10)
    assert [name for name, _ in pulled.files] == sorted(name for name, _ in files)
    for name, src in files:
        out = tmp_path / "fresh" / name
        assert out.read_bytes() == src.read_bytes()
        assert (out.stat().st_mode & 0o777) == (0o755 if name.endswith(".py") else 0o644)
    assert pulled.config == b'{"a":1}'
    m = pulled.manifest
    assert m["mediaType"] == OCI_MANIFEST and m["artifactType"] == "application/vnd.envkit.run.v1"
    assert m["annotations"] == {"io.envkit.run.id": "x"}


def test_pushing_twice_gives_the_same_digest(registry, files, tmp_path):
    repo = f"{registry}/envkit-test/twice"
    first = push_artifact(repo, files, {"k": "v"}, tag="run-a")
    moved = tmp_path / "elsewhere"
    shutil.copytree(files[0][1].parent, moved)  # other paths, other mtimes: same names and bytes
    again = push_artifact(repo, [(n, moved / p.relative_to(files[0][1].parent)) for n, p in reversed(files)],
                          {"k": "v"})
    assert again == first
    assert push_artifact(repo, files, {"k": "w"}) != first  # the annotations are part of it


def test_a_blob_altered_in_the_registry_is_refused_naming_the_file(registry, session_dir, files, tmp_path):
    ref = push_artifact(f"{registry}/envkit-test/altered", files)
    data = blob_data(session_dir, layer_digest(ref, "sub/weights.bin"))
    original = data.read_bytes()
    try:
        data.write_bytes(b"X" + original[1:])  # same size
        with pytest.raises(BundleError, match=r"sub/weights\.bin does not match its sha256") as err:
            pull_artifact(ref, tmp_path / "a", 10**7, 10)
        assert "\n" not in str(err.value) and err.value.exit_code == 42
        assert not any((tmp_path / "a").iterdir())  # nothing half-checked is left
        data.write_bytes(original + b"and more")  # the registry sends more than the manifest says
        with pytest.raises(BundleError, match=r"sub/weights\.bin: the registry sent more than the 300000 bytes"):
            pull_artifact(ref, tmp_path / "b", 10**7, 10)
    finally:
        data.write_bytes(original)
    pull_artifact(ref, tmp_path / "c", 10**7, 10)


def test_a_manifest_that_does_not_hash_to_the_reference_is_refused(registry, session_dir, files, tmp_path):
    ref = push_artifact(f"{registry}/envkit-test/subst", files, {"note": "original"})
    stored = blob_data(session_dir, ref.split("@")[1])
    stored.write_bytes(stored.read_bytes().replace(b'"original"', b'"replaced"'))
    with pytest.raises(BundleError, match="hashes to sha256:.*not to the digest asked for"):
        pull_artifact(ref, tmp_path / "out", 10**7, 10)
    assert not any((tmp_path / "out").iterdir())


def push_raw(registry: str, repo: str, names_and_data: list[tuple[str, bytes]], config: bytes = b"{}",
             annotations: dict | None = None) -> str:
    """An artifact written without push_artifact's checks, as a hostile pusher would."""
    layers = []
    with RegistryClient(registry) as client:
        for name, data in names_and_data:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            client.put_blob(repo, data, digest, name, None)
            layers.append({"mediaType": "application/vnd.envkit.file.v1", "digest": digest, "size": len(data),
                           "annotations": {"org.opencontainers.image.title": name}})
        cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
        client.put_blob(repo, config, cdigest, "config", None)
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": layers,
                           "artifactType": "application/vnd.envkit.run.v1", "annotations": annotations or {},
                           "config": {"mediaType": "application/vnd.envkit.run.config.v1+json", "digest": cdigest,
                                      "size": len(config)}}).encode()
        return f"{registry}/{repo}@{client.put_manifest(repo, body)}"


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/evil", "a/../../b", "a\\..\\b", "a/./b", "a//b", "",
                                  "nul\x00byte", "new\nline"])
def test_hostile_names_are_refused(registry, tmp_path, name):
    (tmp_path / "f").write_bytes(b"payload")
    with pytest.raises(BundleError, match="safe relative path"):
        push_artifact(f"{registry}/envkit-test/hostile", [(name, tmp_path / "f")])
    ref = push_raw(registry, "envkit-test/hostile", [("ok.txt", b"fine"), (name, b"payload " + os.urandom(4))])
    dest = tmp_path / "deep" / "dest"
    with pytest.raises(BundleError, match="not a safe relative path|without a name") as err:
        pull_artifact(ref, dest, 10**6, 10)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["deep", "dest", "f"]  # nothing written anywhere


def test_clashing_names_are_refused(registry, tmp_path):
    ref = push_raw(registry, "envkit-test/clash", [("a", b"1"), ("a/b", b"2")])
    with pytest.raises(BundleError, match="both as a file and as a folder"):
        pull_artifact(ref, tmp_path / "o", 10**6, 10)
    ref = push_raw(registry, "envkit-test/clash", [("a", b"1"), ("a", b"2")])
    with pytest.raises(BundleError, match="names 'a' twice"):
        pull_artifact(ref, tmp_path / "o", 10**6, 10)


def test_size_caps_are_enforced_before_downloading(registry, files, tmp_path):
    ref = push_artifact(f"{registry}/envkit-test/caps", files)
    with pytest.raises(BundleError, match="holds 4 files, more than the 3 allowed"):
        pull_artifact(ref, tmp_path / "a", 10**7, 3)
    with pytest.raises(BundleError, match=r"holds 0\.3 MiB, more than the 0\.1 MiB allowed"):
        pull_artifact(ref, tmp_path / "b", 100_000, 10)
    assert not any((tmp_path / "a").iterdir()) and not any((tmp_path / "b").iterdir())


def test_an_unreachable_registry_is_one_line(tmp_path, files):
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryError, match=f"cannot reach registry {dead} .*refused") as err:
        push_artifact(f"{dead}/envkit-test/x", files)
    with pytest.raises(RegistryError, match=f"cannot reach registry {dead}"):
        pull_artifact(f"{dead}/envkit-test/x@sha256:{'0' * 64}", tmp_path / "o", 10, 10)
    assert time.monotonic() - started < 30  # no retries with back-off (loose: a bound on hanging, not a benchmark)
    assert "\n" not in str(err.value) and err.value.exit_code == 24 and err.value.hint
    with pytest.raises(RegistryError, match="not a registry reference"):
        push_artifact("just-a-name", files)


@pytest.fixture(scope="module")
def login_registry(tmp_path_factory):
    """docker-registry with its built-in "silly" auth: every request without credentials gets a 401 challenge."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    d = tmp_path_factory.mktemp("login-registry")
    port = free_port()
    (d / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {d / 'storage'}\n"
        f"auth:\n  silly:\n    realm: envkit-test\n    service: envkit-test\nhttp:\n  addr: 127.0.0.1:{port}\n")
    with (d / "log").open("w") as log:
        proc = subprocess.Popen([exe, "serve", str(d / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_a_registry_asking_for_a_login_is_one_line(login_registry, files, tmp_path):
    with pytest.raises(RegistryError, match="asks for a login.*Bearer realm=\"envkit-test\".*does not log in") as err:
        push_artifact(f"{login_registry}/envkit-test/x", files)
    assert "\n" not in str(err.value) and err.value.exit_code == 24
    with pytest.raises(RegistryError, match="asks for a login"):
        pull_artifact(f"{login_registry}/envkit-test/x@sha256:{'0' * 64}", tmp_path / "o", 10, 10)


# --- whole runs ----------------------------------------------------------------------------------------------------
def make_run(root: Path, big_output_bytes: int = 0) -> tuple[FileStore, RunRecord]:
    """A finished run folder as envkit run leaves it: snapshot, working copy with outputs, output dir, meta, logs."""
    project = root / "project"
    (project / "pkg").mkdir(parents=True)
    (project / "train.py").write_text(f"import pkg.util  # {os.urandom(8).hex()}\n")
    (project / "pkg" / "util.py").write_text("X = 1\n")
    (project / "run.sh").write_text("#!/bin/sh\npython train.py\n")
    (project / "run.sh").chmod(0o755)
    os.symlink("pkg/util.py", project / "util_link.py")
    store = FileStore(root / "store")
    run_id = store.create_run()
    run = store.run_dir(run_id)
    code = snapshot(project, run / "work")
    shutil.copytree(run / "work", run / "code", symlinks=True)
    (run / "work" / "model.pt").write_bytes(os.urandom(50_000))
    (run / "output").mkdir()
    (run / "output" / "metrics.json").write_text('{"loss": 0.5}\n')
    if big_output_bytes:
        (run / "output" / "big.bin").write_bytes(os.urandom(big_output_bytes))
    (run / "meta").mkdir()
    (run / "meta" / "bootstrap-1.json").write_text("{}\n")
    (run / "stdout.log").write_text("drew 0.1\n")
    (run / "stderr.log").write_text("")
    (run / "lock.yaml").write_text("version: 1\n")
    diff = b"diff --git a/train.py b/train.py\n"
    (run / "git.diff").write_bytes(diff)
    outputs = [e for e in manifest(run / "work").entries if e.path == "model.pt"]
    outputs += [type(e)(OUTPUT + e.path, e.size, e.sha256, e.link) for e in manifest(run / "output").entries]
    record = RunRecord(run_id=run_id, status="succeeded", script="train.py", seed=1, exit_code=0,
                       image=ImageInfo(id="sha256:" + "ab" * 32),
                       code=CodeInfo(sha256=code.sha256, files=code.entries, git_dirty=True,
                                     diff_sha256=hashlib.sha256(diff).hexdigest()),
                       outputs=sorted(outputs, key=lambda e: e.path))
    store.write(record)
    return store, record


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        if p.is_dir() and not p.is_symlink() or name.startswith(skip):
            continue
        out[name] = ("link", os.readlink(p)) if p.is_symlink() else (p.read_bytes(), p.stat().st_mode & 0o777)
    return out


def test_a_run_travels_through_the_registry(registry, tmp_path):
    store, record = make_run(tmp_path / "a", big_output_bytes=300_000)
    run = store.run_dir(record.run_id)
    ref, contents = push_run(run, record, f"{registry}/envkit-test/runs", max_output_bytes=200_000)
    assert [e["path"] for e in contents.not_carried] == [OUTPUT + "big.bin"]
    assert ("code/util_link.py", "pkg/util.py") in contents.links
    assert push_run(run, record, f"{registry}/envkit-test/runs", max_output_bytes=200_000)[0] == ref
    assert resolve_run(f"{registry}/envkit-test/runs", record.run_id) == ref
    store_b = FileStore(tmp_path / "b" / "store")
    pulled = pull_run(store_b, ref, expect_run_id=record.run_id)
    assert (pulled.run_id, pulled.already_present, pulled.not_carried) == (record.run_id, False, [OUTPUT + "big.bin"])
    run_b = store_b.run_dir(record.run_id)
    expected = tree(run, skip=("work/",))
    del expected["output/big.bin"]
    expected["work/model.pt"] = tree(run)["work/model.pt"]
    got = tree(run_b)
    origin = json.loads(got.pop("origin.json")[0])  # marked as imported: replay takes no host path from it
    assert origin["registry"] == ref and origin["bytes"] > 0
    assert got == expected  # code (modes, links), outputs, logs, meta, lock, diff: byte for byte
    assert store_b.read(record.run_id).to_dict() == record.to_dict()
    assert [r["run_id"] for r in store_b.list().rows] == [record.run_id]
    assert [p.name for p in store_b.runs_dir.iterdir()] == [record.run_id]  # no temporary folder left
    assert pull_run(store_b, ref).already_present
    with pytest.raises(RunNotFoundError, match="no run 20200101T000000000Z-00000000 in"):
        resolve_run(f"{registry}/envkit-test/runs", "20200101T000000000Z-00000000")


def test_a_run_whose_code_was_altered_in_the_registry_is_refused(registry, session_dir, tmp_path):
    store, record = make_run(tmp_path / "a")
    ref, _ = push_run(store.run_dir(record.run_id), record, f"{registry}/envkit-test/runs")
    data = blob_data(session_dir, layer_digest(ref, "code/train.py"))
    original = data.read_bytes()
    data.write_bytes(original.replace(b"import", b"IMPORT"))
    try:
        store_b = FileStore(tmp_path / "b")
        with pytest.raises(BundleError, match=r"code/train\.py does not match its sha256"):
            pull_run(store_b, ref)
        assert list(store_b.runs_dir.iterdir()) == []
    finally:
        data.write_bytes(original)


def test_a_run_folder_altered_since_its_record_is_not_pushed(registry, tmp_path):
    """The record's hashes name the blobs; docker-registry checks the bytes against them on upload."""
    store, record = make_run(tmp_path / "a")
    code = store.run_dir(record.run_id) / "code" / "train.py"
    code.write_text(code.read_text().replace("import", "IMPORT"))
    with pytest.raises(BundleError, match=r"code/train\.py does not hash to sha256:.*changed since it was hashed"):
        push_run(store.run_dir(record.run_id), record, f"{registry}/envkit-test/runs")
    code.unlink()
    with pytest.raises(StoreError, match=r"lacks code/train\.py, which its record lists"):
        push_run(store.run_dir(record.run_id), record, f"{registry}/envkit-test/runs")


def test_an_artifact_whose_files_disagree_with_its_record_is_refused(registry, tmp_path):
    """A self-consistent artifact (every blob matches the manifest) whose code is not what its record hashed."""
    store, record = make_run(tmp_path / "a")
    run = store.run_dir(record.run_id)
    (run / "code" / "pkg" / "util.py").write_text("X = 2\n")
    contents = run_contents(run, record)
    config = json.dumps({"format": 1, "run_id": record.run_id, "links": [
        {"path": n, "target": t} for n, t in contents.links], "not_carried": []}).encode()
    ref = push_artifact(f"{registry}/envkit-test/runs", contents.files, {"io.envkit.run.id": record.run_id},
                        config=config, config_media_type="application/vnd.envkit.run.config.v1+json")
    with pytest.raises(BundleError, match=r"code file pkg/util\.py does not match the run record"):
        pull_run(FileStore(tmp_path / "b"), ref)
    with pytest.raises(BundleError, match=r"code file pkg/util\.py does not match the run record"):
        check_run_files(run, record)


@pytest.mark.parametrize("link, target, message", [
    ("code/evil", "../../../etc/passwd", "points outside the run"),
    ("code/evil", "/etc/passwd", "points outside the run"),
    ("code/evil", "pkg/../../..", "points outside the run"),
    ("evil", "code", "not a safe new path"),
    ("code/train.py", "x", "not a safe new path"),
    ("code/pkg", "x", "would be a folder of other files"),
])
def test_hostile_links_are_refused(registry, tmp_path, link, target, message):
    store, record = make_run(tmp_path / "a")
    contents = run_contents(store.run_dir(record.run_id), record)
    config = json.dumps({"format": 1, "run_id": record.run_id, "links": [{"path": link, "target": target}]})
    ref = push_raw(registry, "envkit-test/links", [(n, p.read_bytes()) for n, p in contents.files], config.encode(),
                   {"io.envkit.run.id": record.run_id})
    store_b = FileStore(tmp_path / "b")
    with pytest.raises(BundleError, match=message):
        pull_run(store_b, ref)
    assert list(store_b.runs_dir.iterdir()) == []


def test_an_artifact_with_files_outside_a_run_folder_is_refused(registry, tmp_path):
    store, record = make_run(tmp_path / "a")
    contents = run_contents(store.run_dir(record.run_id), record)
    config = json.dumps({"format": 1, "run_id": record.run_id,
                         "links": [{"path": n, "target": t} for n, t in contents.links]}).encode()
    base = [(n, p.read_bytes()) for n, p in contents.files]
    ref = push_raw(registry, "envkit-test/extra", base + [(".bashrc", b"evil")], config,
                   {"io.envkit.run.id": record.run_id})
    with pytest.raises(BundleError, match=r"holds '\.bashrc', which is not part of an envkit run"):
        pull_run(FileStore(tmp_path / "b"), ref)
    ref = push_raw(registry, "envkit-test/extra", base + [("work/extra.py", b"evil")], config,
                   {"io.envkit.run.id": record.run_id})
    with pytest.raises(BundleError, match=r"work/extra\.py is not part of run"):
        pull_run(FileStore(tmp_path / "b"), ref)


def test_a_record_naming_paths_outside_the_run_or_another_run_is_refused(registry, tmp_path):
    store, record = make_run(tmp_path / "a")
    contents = run_contents(store.run_dir(record.run_id), record)
    hostile = record.to_dict()
    hostile["outputs"][0]["path"] = "../../../../etc/passwd"
    files = [(n, json.dumps(hostile).encode() if n == "record.json" else p.read_bytes()) for n, p in contents.files]
    config = json.dumps({"format": 1, "run_id": record.run_id,
                         "links": [{"path": n, "target": t} for n, t in contents.links]}).encode()
    ref = push_raw(registry, "envkit-test/records", files, config, {"io.envkit.run.id": record.run_id})
    with pytest.raises(BundleError, match="the run record names an unsafe path '../../../../etc/passwd'"):
        pull_run(FileStore(tmp_path / "b"), ref)
    ref, _ = push_run(store.run_dir(record.run_id), record, f"{registry}/envkit-test/records")
    with pytest.raises(BundleError, match="and run 20200101T000000000Z-00000000 was asked for"):
        pull_run(FileStore(tmp_path / "b"), ref, expect_run_id="20200101T000000000Z-00000000")


def test_the_digest_of_a_manifest_is_canonical():
    """The same layers and annotations in any order give the same bytes (a pure check, beside the registry ones)."""
    from envkit.store.oci import Layer

    a = Layer("a", "sha256:" + "1" * 64, 1, False)
    cfg = {"mediaType": "x/y", "digest": "sha256:" + "2" * 64, "size": 2}
    one = canonical_manifest([a], {"x": "1", "y": "2"}, "t", cfg)
    assert one == canonical_manifest([a], {"y": "2", "x": "1"}, "t", dict(reversed(list(cfg.items()))))
    assert b" " not in one and b"created" not in one


@pytest.mark.docker
def test_a_real_run_pulled_into_an_empty_store_replays_identical(registry, tiny_image, tmp_path):
    """envkit run on host A's store, push, pull into an empty store, replay from there: IDENTICAL."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "draw.py").write_text(
        "import json, os, random\n"
        "draws = [random.random() for _ in range(5)]\n"
        "json.dump(draws, open('draws.json', 'w'))\n"
        "json.dump(draws[:2], open(os.path.join(os.environ['ENVKIT_OUTPUT_DIR'], 'head.json'), 'w'))\n")
    env_a = {"ENVKIT_HOME": str(tmp_path / "store-a")}
    r = envkit("run", "--seed", "5", "--image", tiny_image, "--json", "draw.py", cwd=project, env=env_a)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    store_a = FileStore(tmp_path / "store-a")
    record = store_a.read(run_id)
    ref, contents = push_run(store_a.run_dir(run_id), record, f"{registry}/envkit-test/real-runs")
    assert {"record.json", "stdout.log", "code/draw.py", "work/draws.json", "output/head.json"} <= {
        n for n, _ in contents.files}
    store_b = FileStore(tmp_path / "store-b")
    assert pull_run(store_b, resolve_run(f"{registry}/envkit-test/real-runs", run_id)).run_id == run_id
    r = envkit("replay", run_id, "--json", cwd=tmp_path, env={"ENVKIT_HOME": str(store_b.root)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"]["kind"] == "IDENTICAL"
