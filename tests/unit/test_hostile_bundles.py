"""The bundle importer against crafted tarballs (hypothesis): one EnvkitError line or a clean import, never a
traceback, and never a write outside the store."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envkit.errors import EnvkitError
from envkit.manifest import manifest
from envkit.store.bundle import export_run, import_bundle
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, RunRecord

NAMES = st.sampled_from([
    "run/record.json", "run/code/train.py", "run/work/model.bin", "run/output/x", "run/meta/trace.jsonl",
    "run/../escape", "/etc/passwd", "run/code/../../up", "image.tar", "envkit-bundle.json", "run", "run/code",
    "other/file", "run/code/a/b/c", "run/./code/x", "run//x", "run/code/\x00nul", "run/work",
])
KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
                         tarfile.CHRTYPE])
LINKS = st.sampled_from(["..", "../..", "/etc/passwd", "train.py", "a/../..", "../record.json", "code", ""])
MEMBER = st.tuples(NAMES, KINDS, LINKS, st.binary(max_size=64))


def base_bundle(tmp: Path) -> tuple[bytes, dict, list[tuple[tarfile.TarInfo, bytes | None]]]:
    store = FileStore(tmp / "src")
    run_id = store.create_run()
    layout = store.layout(run_id)
    layout.code.mkdir()
    (layout.code / "train.py").write_text("print(1)\n")
    code = manifest(layout.code)
    store.write(RunRecord(run_id=run_id, seed=1, status="succeeded", code=CodeInfo(sha256=code.sha256,
                                                                                   files=code.entries)))
    path = tmp / "b.tar.gz"
    export_run(store, run_id, path)
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    man = json.loads(members[0][1])
    return path.read_bytes(), man, members[1:]


def build(members, man, fix_manifest: bool) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as out:
        if fix_manifest:
            for info, data in members:
                if data is not None and info.isfile() and info.name.startswith("run/"):
                    man["files"][info.name] = hashlib.sha256(data).hexdigest()
                    man["sizes"][info.name] = len(data)
        raw = json.dumps(man).encode()
        head = tarfile.TarInfo("envkit-bundle.json")
        head.size = len(raw)
        out.addfile(head, io.BytesIO(raw))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(extra=st.lists(MEMBER, max_size=5), drop=st.integers(0, 3), fix_manifest=st.booleans())
def test_crafted_bundles_are_imported_or_refused_in_one_line(tmp_path_factory, extra, drop, fix_manifest):
    tmp = tmp_path_factory.mktemp("hostile")
    _, man, members = base_bundle(tmp)
    members = members[drop:] if drop < len(members) else members
    for name, kind, link, data in extra:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = link
        members.append((info, data if kind == tarfile.REGTYPE else None))
    try:
        raw = build(members, man, fix_manifest)
    except (ValueError, tarfile.TarError):
        return  # tarfile itself refuses to write such a member (a NUL in a name): nothing to import
    bundle = tmp / "crafted.tar.gz"
    bundle.write_bytes(raw)
    before = {p for p in tmp.rglob("*")}
    store = FileStore(tmp / "dst")
    try:
        import_bundle(store, bundle)
    except EnvkitError as exc:
        assert exc.message and "\n" not in exc.message
    after = {p for p in tmp.rglob("*")} - before
    assert all(p == tmp / "dst" or (tmp / "dst") in p.parents for p in after), sorted(map(str, after))[:5]
    assert not list((tmp / "dst" / "runs").glob(".import-*")) if (tmp / "dst" / "runs").exists() else True


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(manifest_text=st.one_of(st.binary(max_size=200), st.just(b"[]"), st.just(b'{"format": 2}'),
                               st.just(b'{"format": 2, "run_id": "x", "files": {"../x": "' + b"0" * 64 + b'"}}'),
                               st.just(b"[" * 100000)))
def test_any_manifest_is_refused_in_one_line(tmp_path_factory, manifest_text):
    tmp = tmp_path_factory.mktemp("manifest")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as out:
        head = tarfile.TarInfo("envkit-bundle.json")
        head.size = len(manifest_text)
        out.addfile(head, io.BytesIO(manifest_text))
    bundle = tmp / "m.tar.gz"
    bundle.write_bytes(buf.getvalue())
    try:
        import_bundle(FileStore(tmp / "dst"), bundle)
    except EnvkitError as exc:
        assert "\n" not in exc.message
    else:
        raise AssertionError("a bundle without a run was imported")
