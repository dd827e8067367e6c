"""Bundles from strangers (issue 12): each test is a crafted bundle or run folder that main accepted.

What a user relies on: importing someone's bundle never retags or replaces a local image, never writes or reads
outside the store, never fills the disk before refusing, and an export never packs files from outside the run folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import BundleError
from envkit.manifest import ManifestEntry, manifest
from envkit.store.bundle import MANIFEST, check_image_archive, export_run, import_bundle
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, ImageInfo, RunRecord

from .fakes import FakeEngine

IMAGE_ID_CONFIG = b'{"architecture":"amd64","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
IMAGE_ID = "sha256:" + hashlib.sha256(IMAGE_ID_CONFIG).hexdigest()


def make_run(store: FileStore, image_id: str | None = None) -> str:
    run_id = store.create_run()
    layout = store.layout(run_id)
    layout.code.mkdir()
    (layout.code / "train.py").write_text("print('hi')\n")
    layout.work.mkdir()
    (layout.work / "model.bin").write_bytes(b"\x00weights")
    layout.stdout_log.write_text("hi\n")
    code = manifest(layout.code)
    store.write(RunRecord(run_id=run_id, script="train.py", seed=1, status="succeeded", exit_code=0,
                          code=CodeInfo(sha256=code.sha256, files=code.entries),
                          outputs=manifest(layout.work).entries, image=ImageInfo(id=image_id)))
    return run_id


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_info(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def image_archive(repo_tags: list[str] | None, config: bytes = IMAGE_ID_CONFIG) -> bytes:
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    man = json.dumps([{"Config": config_name, "RepoTags": repo_tags, "Layers": []}]).encode()
    return tar_bytes([(file_info("manifest.json"), man), (file_info(config_name), config)], gz=False)


def bundle_with_image(tmp_path: Path, image_tar: bytes) -> Path:
    """An exported run whose bundle also carries ``image_tar`` (manifest hashes made to match)."""
    store = FileStore(tmp_path / "src")
    run_id = make_run(store, IMAGE_ID)
    plain = tmp_path / "plain.tar.gz"
    export_run(store, run_id, plain)
    out = []
    with tarfile.open(plain) as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isfile() else None
            if m.name == MANIFEST:
                man = json.loads(data)
                man["files"]["image.tar"] = hashlib.sha256(image_tar).hexdigest()
                man["sizes"]["image.tar"] = len(image_tar)
                man["image"] = {"file": "image.tar", "id": IMAGE_ID, "sha256": man["files"]["image.tar"]}
                data = json.dumps(man).encode()
            out.append((m, data))
    out.append((file_info("image.tar"), image_tar))
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(tar_bytes(out))
    return bundle


# --- High 2: images from bundles ---------------------------------------------------------------------------------------
def test_an_image_archive_that_names_local_images_is_refused_before_loading(tmp_path):
    engine = FakeEngine()
    bundle = bundle_with_image(tmp_path, image_archive(["envkit/base:bookworm-py3.11"]))
    with pytest.raises(BundleError, match="retag local images"):
        import_bundle(FileStore(tmp_path / "dst"), bundle, engine=engine)
    assert [c for c, _ in engine.calls if c == "load"] == []
    assert not list((tmp_path / "dst" / "runs").glob("2*"))


def test_an_image_whose_config_is_not_the_recorded_image_is_refused_before_loading(tmp_path):
    engine = FakeEngine()
    other = image_archive(None, config=b'{"architecture":"amd64","other":true}')
    bundle = bundle_with_image(tmp_path, other)
    with pytest.raises(BundleError, match="the run used"):
        import_bundle(FileStore(tmp_path / "dst"), bundle, engine=engine)
    assert [c for c, _ in engine.calls if c == "load"] == []


def test_an_untagged_image_of_the_recorded_id_passes_the_archive_check(tmp_path):
    archive = tmp_path / "image.tar"
    archive.write_bytes(image_archive(None))
    check_image_archive(archive, IMAGE_ID)  # no exception
    archive.write_bytes(image_archive([]))
    check_image_archive(archive, IMAGE_ID)


def test_two_images_or_a_repositories_file_are_refused(tmp_path):
    archive = tmp_path / "image.tar"
    config_name = hashlib.sha256(IMAGE_ID_CONFIG).hexdigest() + ".json"
    two = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": []}] * 2).encode()
    archive.write_bytes(tar_bytes([(file_info("manifest.json"), two), (file_info(config_name), IMAGE_ID_CONFIG)],
                                  gz=False))
    with pytest.raises(BundleError, match="exactly one image"):
        check_image_archive(archive, IMAGE_ID)
    one = json.dumps([{"Config": config_name, "RepoTags": None, "Layers": []}]).encode()
    archive.write_bytes(tar_bytes([(file_info("manifest.json"), one), (file_info(config_name), IMAGE_ID_CONFIG),
                                   (file_info("repositories"), b'{"envkit/base":{"x":"y"}}')], gz=False))
    with pytest.raises(BundleError, match="unexpected member 'repositories'"):
        check_image_archive(archive, IMAGE_ID)


# --- High 4: links --------------------------------------------------------------------------------------------------
def test_a_chain_of_relative_links_to_another_folder_is_refused_at_import(tmp_path):
    store = FileStore(tmp_path / "src")
    run_id = make_run(store)
    plain = tmp_path / "plain.tar.gz"
    export_run(store, run_id, plain)
    with tarfile.open(plain) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()
                   if not m.name.startswith("run/code")]
    chain = []
    for name, target in [("run/a", ".."), ("run/up1", "a/.."), ("run/up2", "up1/.."), ("run/code", "up2/victim/.ssh")]:
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, target
        chain.append((link, None))
    bundle = tmp_path / "chain.tar.gz"
    bundle.write_bytes(tar_bytes(members[:1] + chain + members[1:]))
    with pytest.raises(BundleError, match="link outside the code snapshot"):
        import_bundle(FileStore(tmp_path / "dst"), bundle)


def test_export_never_follows_a_link_out_of_the_run_folder(tmp_path):
    victim = tmp_path / "victim" / ".ssh"
    victim.mkdir(parents=True)
    (victim / "id_rsa").write_text("PRIVATE KEY")
    store = FileStore(tmp_path / "store")
    run_id = make_run(store)
    layout = store.layout(run_id)
    import shutil

    shutil.rmtree(layout.code)
    layout.code.symlink_to(victim)
    with pytest.raises(BundleError, match="code in its folder is a link"):
        export_run(store, run_id, tmp_path / "out.tar.gz")
    assert not (tmp_path / "out.tar.gz").exists()


def test_an_output_path_outside_the_run_folder_is_never_exported(tmp_path):
    store = FileStore(tmp_path / "store")
    run_id = make_run(store)
    record = store.read(run_id)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret")
    record.outputs.append(ManifestEntry(str(secret), secret.stat().st_size, "0" * 64, link="x"))
    store.write(record)
    with pytest.raises(BundleError, match="not a relative path"):
        export_run(store, run_id, tmp_path / "out.tar.gz")
    layout = store.layout(run_id)
    (layout.work / "escape").symlink_to(tmp_path)  # a parent folder that is a link
    record.outputs[-1] = ManifestEntry("escape/shadow", secret.stat().st_size, "0" * 64)
    store.write(record)
    with pytest.raises(BundleError, match="outside the run folder"):
        export_run(store, run_id, tmp_path / "out.tar.gz")


# --- Medium 8: bombs ----------------------------------------------------------------------------------------------------
def test_a_small_bundle_that_unpacks_to_hundreds_of_megabytes_is_refused_before_writing(tmp_path):
    store = FileStore(tmp_path / "src")
    run_id = make_run(store)
    plain = tmp_path / "plain.tar.gz"
    export_run(store, run_id, plain)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(plain) as tar, gzip.open(bomb, "wb", compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w|") as out:
            for m in tar.getmembers():
                out.addfile(m, tar.extractfile(m) if m.isfile() else None)
            big = tarfile.TarInfo("run/output/zeros.bin")
            big.size = 2**28

            class Zeros(io.RawIOBase):
                left = 2**28

                def readable(self):
                    return True

                def readinto(self, b):
                    n = min(len(b), self.left)
                    b[:n] = bytes(n)
                    self.left -= n
                    return n

            out.addfile(big, io.BufferedReader(Zeros(), 2**20))
    assert bomb.stat().st_size < 2 * 2**20
    dst = FileStore(tmp_path / "dst")
    with pytest.raises(BundleError, match="not listed in the bundle's manifest"):
        import_bundle(dst, bomb)
    written = sum(f.stat().st_size for f in (tmp_path / "dst").rglob("*") if f.is_file())
    assert written < 2**20


def test_a_bundle_over_the_limit_is_refused_from_its_headers(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "src")
    run_id = make_run(store)
    bundle = tmp_path / "b.tar.gz"
    export_run(store, run_id, bundle)
    monkeypatch.setenv("ENVKIT_MAX_BUNDLE_BYTES", "100")
    with pytest.raises(BundleError, match="would take more than"):
        import_bundle(FileStore(tmp_path / "dst"), bundle)


def test_import_of_a_device_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    assert main(["import", "/dev/zero"]) == BundleError.exit_code
    err = capsys.readouterr().err
    assert "not a regular file" in err and "Traceback" not in err


def test_a_python_without_the_data_filter_is_refused_not_worked_around(tmp_path, monkeypatch):
    store = FileStore(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    export_run(store, make_run(store), bundle)
    monkeypatch.delattr("tarfile.data_filter")
    with pytest.raises(BundleError, match="3.11.4"):
        import_bundle(FileStore(tmp_path / "dst"), bundle)


# --- Low: tracebacks and durability --------------------------------------------------------------------------------------
def test_export_onto_a_folder_and_of_a_run_missing_an_output_are_one_line(tmp_path, monkeypatch, capsys):
    store = FileStore(tmp_path / "store")
    run_id = make_run(store)
    monkeypatch.setenv("ENVKIT_HOME", str(store.root))
    (tmp_path / "folder").mkdir()
    assert main(["export", run_id, "-o", str(tmp_path / "folder")]) == BundleError.exit_code
    assert "is a folder" in capsys.readouterr().err
    (store.layout(run_id).work / "model.bin").unlink()
    assert main(["export", run_id, "-o", str(tmp_path / "x.tar.gz")]) == BundleError.exit_code
    err = capsys.readouterr().err
    assert "output model.bin is missing" in err and "Traceback" not in err


def test_two_imports_of_one_run_at_once_both_end_well(tmp_path):
    store = FileStore(tmp_path / "src")
    run_id = make_run(store)
    bundle = tmp_path / "b.tar.gz"
    export_run(store, run_id, bundle)
    dst = FileStore(tmp_path / "dst")
    results, errors = [], []

    def one():
        try:
            results.append(import_bundle(dst, bundle))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(not r.already_present for r in results) == 1
    assert dst.read(run_id).run_id == run_id
    assert not list(dst.runs_dir.glob(".import-*"))


def test_a_crashed_import_leaves_no_temporary_folder_behind(tmp_path):
    dst = FileStore(tmp_path / "dst")
    dst.runs_dir.mkdir(parents=True)
    stale = dst.runs_dir / ".import-999999999-abc"  # a pid that cannot be alive
    (stale / "run").mkdir(parents=True)
    store = FileStore(tmp_path / "src")
    bundle = tmp_path / "b.tar.gz"
    export_run(store, make_run(store), bundle)
    import_bundle(dst, bundle)
    assert not stale.exists()


def test_an_imported_run_is_marked_as_imported(tmp_path):
    from envkit.store.bundle import is_imported

    store = FileStore(tmp_path / "src")
    run_id = make_run(store)
    bundle = tmp_path / "b.tar.gz"
    export_run(store, run_id, bundle)
    assert not is_imported(store.layout(run_id))
    dst = FileStore(tmp_path / "dst")
    import_bundle(dst, bundle)
    assert is_imported(dst.layout(run_id))
    assert os.path.basename(json.loads(dst.layout(run_id).origin.read_text())["bundle"]) == "b.tar.gz"
