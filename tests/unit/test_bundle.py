"""Bundles move runs between hosts; import trusts nothing (no engine needed without --with-image)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import BundleError
from envkit.manifest import manifest
from envkit.store.bundle import MANIFEST, export_run, import_bundle
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, RunRecord


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, str]:
    store = FileStore(tmp_path / "a")
    run_id = store.create_run()
    run_dir = store.run_dir(run_id)
    (run_dir / "code").mkdir()
    (run_dir / "code" / "train.py").write_text("print('hi')\n")
    (run_dir / "work").mkdir()
    (run_dir / "work" / "model.bin").write_bytes(b"\x00weights")
    (run_dir / "stdout.log").write_text("hi\n")
    code = manifest(run_dir / "code")
    out = manifest(run_dir / "work")
    record = RunRecord(run_id=run_id, script="train.py", seed=1, status="succeeded", exit_code=0,
                       code=CodeInfo(sha256=code.sha256, files=code.entries), outputs=out.entries)
    store.write(record)
    bundle = tmp_path / "run.tar.gz"
    export_run(store, run_id, bundle)
    return bundle, run_id


def rewrite(bundle: Path, dest: Path, change) -> Path:
    """Copy a bundle member by member; `change(info, data)` returns (info, data) or None to drop the member."""
    with tarfile.open(bundle) as src, tarfile.open(dest, "w:gz") as out:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            changed = change(m, data)
            if changed is None:
                continue
            info, data = changed
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def add_member(bundle: Path, dest: Path, info: tarfile.TarInfo, data: bytes | None = None) -> Path:
    rewrite(bundle, dest, lambda m, d: (m, d))
    with tarfile.open(dest) as t:
        members = [(m, t.extractfile(m).read() if m.isfile() else None) for m in t.getmembers()]
    with tarfile.open(dest, "w:gz") as out:
        for m, d in members:
            out.addfile(m, io.BytesIO(d) if d is not None else None)
        if data is not None:
            info.size = len(data)
        out.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


def test_roundtrip(exported, tmp_path):
    bundle, run_id = exported
    store = FileStore(tmp_path / "b")
    result = import_bundle(store, bundle)
    assert result.run_id == run_id and not result.already_present
    rec = store.read(run_id)
    assert (store.run_dir(run_id) / "code" / "train.py").read_text() == "print('hi')\n"
    assert (store.run_dir(run_id) / "work" / "model.bin").read_bytes() == b"\x00weights"
    assert rec.outputs[0].path == "model.bin"
    assert import_bundle(store, bundle).already_present


def test_path_traversal_is_refused(exported, tmp_path, monkeypatch):
    bundle, _ = exported
    evil = tarfile.TarInfo("run/../../evil.txt")
    bad = add_member(bundle, tmp_path / "bad.tar.gz", evil, b"pwned")
    store = FileStore(tmp_path / "b")
    monkeypatch.setenv("ENVKIT_HOME", str(store.root))
    assert main(["import", str(bad)]) == BundleError.exit_code
    assert not (tmp_path / "evil.txt").exists() and not any(store.runs_dir.glob("2*"))


def test_link_leaving_the_bundle_is_refused(exported, tmp_path):
    bundle, _ = exported
    link = tarfile.TarInfo("run/code/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    bad = add_member(bundle, tmp_path / "bad.tar.gz", link)
    with pytest.raises(BundleError, match="link that leaves the bundle"):
        import_bundle(FileStore(tmp_path / "b"), bad)


def test_altered_file_is_named(exported, tmp_path):
    bundle, _ = exported

    def alter(m, d):
        if m.name == "run/code/train.py":
            d = b"import os; os.system('rm -rf /')\n"
            m.size = len(d)
        return m, d

    bad = rewrite(bundle, tmp_path / "bad.tar.gz", alter)
    with pytest.raises(BundleError, match="run/code/train.py'? (in the bundle does not match|is 33 bytes, its "
                                          "manifest says 12)"):
        import_bundle(FileStore(tmp_path / "b"), bad)


def test_altered_file_with_a_matching_manifest_still_fails_against_the_record(exported, tmp_path):
    bundle, _ = exported
    new = b"print('other')\n"

    def alter(m, d):
        if m.name == "run/code/train.py":
            m.size = len(new)
            return m, new
        if m.name == MANIFEST:
            man = json.loads(d)
            man["files"]["run/code/train.py"] = hashlib.sha256(new).hexdigest()
            man["sizes"]["run/code/train.py"] = len(new)
            d = json.dumps(man).encode()
            m.size = len(d)
        return m, d

    bad = rewrite(bundle, tmp_path / "bad.tar.gz", alter)
    with pytest.raises(BundleError, match="code file train.py in the bundle does not match the run record"):
        import_bundle(FileStore(tmp_path / "b"), bad)


def test_not_a_bundle(tmp_path, monkeypatch, capsys):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar")
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "b"))
    assert main(["import", str(junk)]) == BundleError.exit_code
    assert "is not a readable envkit bundle" in capsys.readouterr().err

