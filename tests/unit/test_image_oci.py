"""Reproducible image pieces, without an engine: layers, configs and archives are the same bytes every time."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from envkit.errors import ImageArchiveError
from envkit.image import oci

EPOCH = 1_700_000_000


def make_tree(root: Path, stamp: float) -> Path:
    """A small tree with what layers must survive: nesting, a long name, links, odd modes, fresh mtimes."""
    (root / "b" / "sub").mkdir(parents=True)
    (root / "a-b").mkdir()
    (root / "b" / "sub" / "x.txt").write_bytes(b"x" * 1000)
    (root / "b" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "b" / "run.sh", 0o755)
    (root / "a-b" / "f").write_text("f")
    long = root / ("d" * 120) / ("e" * 120)
    long.mkdir(parents=True)
    (long / ("n" * 150 + ".py")).write_text("print(1)\n")
    os.symlink("sub/x.txt", root / "b" / "link")
    os.link(root / "b" / "sub" / "x.txt", root / "a-b" / "hard")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (stamp, stamp), follow_symlinks=False)
    return root


def names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return [m.name for m in tar]


def test_a_tree_gives_the_same_layer_bytes_whatever_its_times_and_walk(tmp_path):
    a = make_tree(tmp_path / "a", time.time())
    b = make_tree(tmp_path / "b", time.time() + 5000)
    la = oci.write_layer(a, tmp_path / "a.tar", EPOCH, prefix="opt/envkit/venv")
    lb = oci.write_layer(b, tmp_path / "b.tar", EPOCH, prefix="opt/envkit/venv")
    assert la.diff_id == lb.diff_id
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert la.diff_id == "sha256:" + hashlib.sha256((tmp_path / "a.tar").read_bytes()).hexdigest()
    assert la.size == (tmp_path / "a.tar").stat().st_size


def test_layer_entries_are_sorted_normalised_and_parents_first(tmp_path):
    src = make_tree(tmp_path / "src", time.time())
    layer = oci.write_layer(src, tmp_path / "l.tar", EPOCH, prefix="opt/envkit/venv")
    listed = names(layer.path)
    assert listed[:3] == ["opt", "opt/envkit", "opt/envkit/venv"]
    seen: set[str] = set()
    for name in listed:  # every parent is listed before its child
        parent = name.rpartition("/")[0]
        assert not parent or parent in seen
        seen.add(name)
    assert listed.index("opt/envkit/venv/a-b") < listed.index("opt/envkit/venv/b")
    with tarfile.open(layer.path) as tar:
        members = {m.name: m for m in tar}
        for m in members.values():
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "")
            assert m.mtime == EPOCH  # the tree is younger than the epoch: clamped
            assert not m.pax_headers
        assert members["opt/envkit/venv"].mode == 0o755
        assert members["opt/envkit/venv/b/run.sh"].mode == 0o755
        assert members["opt/envkit/venv/b/link"].issym()
        assert members["opt/envkit/venv/b/link"].linkname == "sub/x.txt"
        # the first name in layer order carries the data, the other links to it
        assert members["opt/envkit/venv/a-b/hard"].isreg()
        assert members["opt/envkit/venv/b/sub/x.txt"].islnk()
        assert members["opt/envkit/venv/b/sub/x.txt"].linkname == "opt/envkit/venv/a-b/hard"
        long = next(n for n in members if n.endswith(".py"))
        assert len(long) > 256  # GNU long names: no PAX header needed
        assert tar.extractfile(members[long]).read() == b"print(1)\n"


def test_a_hard_link_never_points_to_a_later_entry(tmp_path):
    src = tmp_path / "src"
    (src / "z" / "deep").mkdir(parents=True)
    (src / "zz").write_text("same inode")  # met first by a walk, but after z/deep/file in layer order
    os.link(src / "zz", src / "z" / "deep" / "file")
    layer = oci.write_layer(src, tmp_path / "l.tar", EPOCH)
    with tarfile.open(layer.path) as tar:
        members = {m.name: m for m in tar}
        assert members["z/deep/file"].isreg() and members["zz"].islnk()
        assert members["zz"].linkname == "z/deep/file"
    out = tmp_path / "out"
    with tarfile.open(layer.path) as tar:
        tar.extractall(out, filter="data")
    assert (out / "zz").read_text() == "same inode"


def test_mtimes_older_than_the_epoch_are_kept(tmp_path):
    src = make_tree(tmp_path / "src", EPOCH - 1000)
    layer = oci.write_layer(src, tmp_path / "l.tar", EPOCH)
    with tarfile.open(layer.path) as tar:
        assert {m.mtime for m in tar} == {EPOCH - 1000}


def test_a_fifo_in_a_tree_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(ImageArchiveError, match="device node, FIFO or socket"):
        oci.write_layer(src, tmp_path / "l.tar", EPOCH)
    layer = oci.write_layer(src, tmp_path / "l.tar", EPOCH, exclude=("pipe",))
    assert names(layer.path) == []


def rootfs_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = kw.pop("mtime", EPOCH + 99)
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti


def test_a_rootfs_tarball_is_normalised_whatever_its_order_and_names(tmp_path):
    shadow = info("./etc/shadow", mode=0o640, uid=0, gid=42, uname="root", gname="shadow")
    shadow.pax_headers = {"SCHILY.xattr.user.x": "1", "atime": "123.4"}
    one = rootfs_tar(tmp_path / "one.tar", [
        (info("./", tarfile.DIRTYPE, mode=0o755), None),
        (info("./etc", tarfile.DIRTYPE, mode=0o755), None),
        (shadow, b"root:*:1::::::\n"),
        (info("./usr/bin/perl5", mode=0o755), b"ELF"),
        (info("./usr/bin/perl", tarfile.LNKTYPE, linkname="./usr/bin/perl5"), None),
        (info("./usr/bin/su", mode=0o4755), b"su"),
        (info("./dev", tarfile.DIRTYPE, mode=0o755), None),
        (info("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), None),
        (info("./bin", tarfile.SYMTYPE, linkname="usr/bin", mode=0o777), None),
    ])
    layer = oci.write_layer_from_tar(one, tmp_path / "layer.tar", EPOCH, exclude=("dev/*",))
    assert names(layer.path) == ["bin", "dev", "etc", "etc/shadow", "usr/bin/perl", "usr/bin/perl5", "usr/bin/su"]
    with tarfile.open(layer.path) as tar:
        m = {x.name: x for x in tar}
        assert (m["etc/shadow"].gid, m["etc/shadow"].gname, m["etc/shadow"].mode) == (42, "", 0o640)
        assert not m["etc/shadow"].pax_headers  # xattrs and atime gone
        assert m["usr/bin/su"].mode == 0o4755  # setuid kept: su must work in the image
        assert m["usr/bin/perl"].isreg() and tar.extractfile(m["usr/bin/perl"]).read() == b"ELF"
        assert m["usr/bin/perl5"].islnk() and m["usr/bin/perl5"].linkname == "usr/bin/perl"
        assert {x.mtime for x in tar} == {EPOCH}
    # the same content in another order, with other names for the owners, gives the same bytes
    two = rootfs_tar(tmp_path / "two.tar", [
        (info("./bin", tarfile.SYMTYPE, linkname="usr/bin", mode=0o777), None),
        (info("usr/bin/su", mode=0o4755), b"su"),
        (info("usr/bin/perl5", mode=0o755), b"ELF"),
        (info("usr/bin/perl", tarfile.LNKTYPE, linkname="usr/bin/perl5"), None),
        (info("etc", tarfile.DIRTYPE, mode=0o755), None),
        (info("etc/shadow", mode=0o640, gid=42, gname="other"), b"root:*:1::::::\n"),
        (info("dev", tarfile.DIRTYPE, mode=0o755), None),
    ])
    again = oci.write_layer_from_tar(two, tmp_path / "again.tar", EPOCH, exclude=("dev/*",))
    assert again.diff_id == layer.diff_id


@pytest.mark.parametrize("entry, message", [
    (info("/etc/passwd"), "absolute name"),
    (info("../../etc/passwd"), "climbs out"),
    (info("etc/../../x"), "climbs out"),
    (info("x", tarfile.LNKTYPE, linkname="../outside"), "climbs out"),
    (info("x", tarfile.LNKTYPE, linkname="missing"), "no earlier file"),
    (info("dev/null", tarfile.CHRTYPE), "device node"),
])
def test_hostile_rootfs_tarballs_are_refused(tmp_path, entry, message):
    src = rootfs_tar(tmp_path / "bad.tar", [(entry, b"data" if entry.isreg() else None)])
    with pytest.raises(ImageArchiveError, match=message):
        oci.write_layer_from_tar(src, tmp_path / "layer.tar", EPOCH)


def test_a_name_given_twice_and_a_compressed_tarball_are_refused(tmp_path):
    twice = rootfs_tar(tmp_path / "twice.tar", [(info("a"), b"1"), (info("./a"), b"2")])
    with pytest.raises(ImageArchiveError, match="twice"):
        oci.write_layer_from_tar(twice, tmp_path / "l.tar", EPOCH)
    gz = tmp_path / "x.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.addfile(info("a", size=0))
    with pytest.raises(ImageArchiveError, match="not an uncompressed tar"):
        oci.write_layer_from_tar(gz, tmp_path / "l.tar", EPOCH)


def test_config_is_canonical_and_dated_at_the_epoch():
    diff = "sha256:" + "a" * 64
    cfg = oci.image_config(diff_ids=[diff], epoch=EPOCH, env={"PATH": "/usr/bin", "A": "1"},
                           labels={"io.envkit.x": "1"}, working_dir="/work", cmd=["python"])
    assert cfg == oci.image_config(diff_ids=[diff], epoch=EPOCH, env={"A": "1", "PATH": "/usr/bin"},
                                   labels={"io.envkit.x": "1"}, working_dir="/work", cmd=["python"])
    assert b'": ' not in cfg and b'", ' not in cfg
    parsed = json.loads(cfg)
    assert parsed["created"] == "2023-11-14T22:13:20Z"
    assert parsed["config"]["Env"] == ["A=1", "PATH=/usr/bin"]
    assert parsed["rootfs"] == {"type": "layers", "diff_ids": [diff]}
    assert [h["created"] for h in parsed["history"]] == ["2023-11-14T22:13:20Z"]
    assert oci.canonical_json(parsed) == cfg
    assert oci.image_id(cfg) == "sha256:" + hashlib.sha256(cfg).hexdigest()
    with pytest.raises(ImageArchiveError, match="history names 2 layers"):
        oci.image_config(diff_ids=[diff], epoch=EPOCH, history=[oci.history_entry(EPOCH, "a")] * 2)


def test_archive_bytes_are_deterministic_and_read_back(tmp_path):
    src = make_tree(tmp_path / "src", time.time())
    layer = oci.write_layer(src, tmp_path / "layer.tar", EPOCH)
    cfg = oci.image_config(diff_ids=[layer.diff_id, layer.diff_id], epoch=EPOCH, cmd=["sh"])
    first = oci.write_docker_archive(tmp_path / "one.tar", cfg, [layer, layer], repo_tags=["envkit/t:1"])
    stream = io.BytesIO()
    second = oci.write_docker_archive(stream, cfg, [layer, layer], repo_tags=["envkit/t:1"])
    assert first == second == oci.image_id(cfg)
    assert (tmp_path / "one.tar").read_bytes() == stream.getvalue()
    archive = oci.read_docker_archive(tmp_path / "one.tar", verify=True)
    assert archive.image_id == first and archive.repo_tags == ["envkit/t:1"]
    assert [blob.diff_id for blob in archive.layers] == [layer.diff_id] * 2
    with (tmp_path / "one.tar").open("rb") as fh:
        fh.seek(archive.layers[0].offset)
        assert fh.read(archive.layers[0].size) == layer.path.read_bytes()
    # reused layers from the archive write the same archive again
    again = oci.write_docker_archive(tmp_path / "two.tar", archive.config_bytes, archive.layers, ["envkit/t:1"])
    assert again == first and (tmp_path / "two.tar").read_bytes() == (tmp_path / "one.tar").read_bytes()
    with pytest.raises(ImageArchiveError, match="not the config's"):
        oci.write_docker_archive(tmp_path / "bad.tar", cfg, [layer])


def test_a_damaged_archive_is_refused(tmp_path):
    src = make_tree(tmp_path / "src", time.time())
    layer = oci.write_layer(src, tmp_path / "layer.tar", EPOCH)
    cfg = oci.image_config(diff_ids=["sha256:" + "0" * 64], epoch=EPOCH)
    oci.write_docker_archive(tmp_path / "a.tar", cfg, [oci.LayerBlob("sha256:" + "0" * 64, layer.path)])
    oci.read_docker_archive(tmp_path / "a.tar")  # without verify, the wrong diff_id goes unseen
    with pytest.raises(ImageArchiveError, match="damaged"):
        oci.read_docker_archive(tmp_path / "a.tar", verify=True)
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    with pytest.raises(ImageArchiveError, match="not an uncompressed docker archive"):
        oci.read_docker_archive(tmp_path / "junk.tar")
