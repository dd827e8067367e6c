from pathlib import Path

import pytest
import yaml

from envkit.cli import main
from envkit.errors import LockfileError
from envkit.lock.model import (
    BaseImage,
    Lockfile,
    PinnedPackage,
    Platform,
    dump_lockfile,
    load_lockfile,
    write_lockfile,
)

SHA = "a" * 64


def make_lock(**over) -> Lockfile:
    fields = dict(
        name="t", python="3.11", platform=Platform("linux", "x86_64", "x86_64-manylinux_2_28"),
        base=BaseImage(ref="envkit/base:x", digest="sha256:" + "b" * 64, python="3.11.2"),
        requirements=("six",), sources={"index_url": [], "indexes": [], "find_links": []},
        environment={"PYTHONHASHSEED": "0"},
        packages=(PinnedPackage("six", "1.17.0", "six-1.17.0-py2.py3-none-any.whl", "file:///w/six.whl", SHA),),
        generated_by="envkit test",
    )
    fields.update(over)
    return Lockfile(**fields).sealed()


def test_roundtrip_keeps_content_and_hash(tmp_path: Path):
    lock = make_lock()
    path = tmp_path / "t.lock.yaml"
    write_lockfile(lock, path)
    again = load_lockfile(path)
    assert again == lock
    assert again.content_sha256 == lock.computed_sha256() and len(lock.content_sha256) == 64


def test_hash_changes_with_any_pin():
    a = make_lock()
    b = make_lock(packages=(PinnedPackage("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl", "file:///w", SHA),))
    assert a.content_sha256 != b.content_sha256


def _edit(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load(dump_lockfile(make_lock()))
    mutate(data)
    path = tmp_path / "x.lock.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_hand_edit_is_detected(tmp_path: Path):
    path = _edit(tmp_path, lambda d: d["packages"][0].update(version="9.9"))
    with pytest.raises(LockfileError, match="edited by hand"):
        load_lockfile(path)


def test_unknown_schema_version(tmp_path: Path):
    path = _edit(tmp_path, lambda d: d.update(schema_version=99))
    with pytest.raises(LockfileError, match="unknown lockfile schema_version 99"):
        load_lockfile(path)


def test_package_without_hash_is_named(tmp_path: Path, capsys):
    path = _edit(tmp_path, lambda d: d["packages"][0].pop("sha256"))
    rc = main(["build", str(path), "--dry-run"])
    err = capsys.readouterr().err
    assert rc == LockfileError.exit_code
    assert "package six has no sha256 hash" in err and "Traceback" not in err


def test_unknown_key(tmp_path: Path):
    path = _edit(tmp_path, lambda d: d.update(extra=1))
    with pytest.raises(LockfileError, match="unknown key 'extra'"):
        load_lockfile(path)


def test_not_a_lockfile(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(LockfileError, match="not an envkit lockfile|schema_version"):
        load_lockfile(path)


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path):
    write_lockfile(make_lock(), tmp_path / "a.lock.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["a.lock.yaml"]


def test_committed_reference_locks_load():
    root = Path(__file__).resolve().parents[2] / "lockfiles"
    cpu = load_lockfile(root / "cpu.lock.yaml")
    cuda = load_lockfile(root / "cuda.lock.yaml")
    assert any(p.name == "torch" and p.version == "2.13.0+cpu" for p in cpu.packages)
    names = {p.name for p in cuda.packages}
    assert "torch" in names and any(n.startswith("nvidia-") for n in names)
    for lock in (cpu, cuda):
        assert lock.environment["PYTHONHASHSEED"] == "0"
        assert lock.environment["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


# --- schema 2: bases by content, expected image IDs, upgrades -----------------------------------------------------
DATA = Path(__file__).resolve().parent / "data"
LOCKS = Path(__file__).resolve().parents[2] / "lockfiles"


def test_committed_locks_pin_their_bases_by_content_and_name_nothing_of_the_locking_machine():
    cpu, cuda = load_lockfile(LOCKS / "cpu.lock.yaml"), load_lockfile(LOCKS / "cuda.lock.yaml")
    assert cpu.base.kind == "debian" and cpu.base.digest is None and len(cpu.base.debian.debs) > 100
    assert set(cpu.images) == {"native", "portable"} and cpu.image_parts is not None
    assert cuda.base.kind == "registry" and cuda.base.pull_ref == f"python@{cuda.base.digest}"
    for name in ("cpu", "cuda"):
        text = (LOCKS / f"{name}.lock.yaml").read_text()
        assert "file://" not in text and "/opt/" not in text and "@files" not in text
    assert all(p.url and p.url.startswith("https://") for p in cpu.packages + cuda.packages)


def test_a_schema_1_lock_is_upgraded_on_read_to_a_local_base_that_says_where_it_builds():
    lock = load_lockfile(DATA / "cpu.v1.lock.yaml")
    assert lock.schema_version == 2 and lock.base.kind == "image"
    assert lock.base.digest == "sha256:4c78957b66c032320df3184b10a20e717ec62035e26a641c2c009031218fccb1"
    assert lock.images == {} and lock.content_sha256 == lock.computed_sha256()
    assert [p.sha256 for p in lock.packages] == [p.sha256 for p in load_lockfile(LOCKS / "cpu.lock.yaml").packages]
    assert "builds only on an engine that has it" in lock.base.describe() or "local base image" in lock.base.describe()


def test_a_hand_edited_schema_1_lock_is_caught_before_the_upgrade(tmp_path: Path):
    text = (DATA / "cpu.v1.lock.yaml").read_text().replace("version: 3.1.2", "version: 3.1.3", 1)
    path = tmp_path / "v1.lock.yaml"
    path.write_text(text)
    with pytest.raises(LockfileError, match="edited by hand"):
        load_lockfile(path)


def test_a_newer_schema_names_the_envkit_that_reads_it(tmp_path: Path):
    data = yaml.safe_load(dump_lockfile(make_lock()))
    data.update(schema_version=3, generated_by="envkit 0.4.1")
    path = tmp_path / "new.lock.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LockfileError) as err:
        load_lockfile(path)
    assert "schema_version 3 (this envkit reads 2" in err.value.message
    assert "envkit 0.4.1 (which wrote it) or later reads it" in err.value.message and err.value.hint == "upgrade envkit"


def test_expected_images_are_outside_the_content_hash(tmp_path: Path):
    from envkit.lock.model import ImageParts

    lock = make_lock()
    pinned = lock.with_images({"native": "sha256:" + "c" * 64},
                              ImageParts("d" * 64, ("sha256:" + "e" * 64,), "sha256:" + "f" * 64)).sealed()
    assert pinned.content_sha256 == lock.content_sha256
    write_lockfile(pinned, tmp_path / "p.lock.yaml")
    assert load_lockfile(tmp_path / "p.lock.yaml") == pinned


@pytest.mark.parametrize("change, words", [
    ({"filename": "pool/../../etc/passwd.deb"}, "is not a pool path"),
    ({"filename": "/pool/main/z/zlib/z.deb"}, "is not a pool path"),
    ({"name": "Zlib"}, "is not a Debian package name"),
    ({"size": -1}, "size -1 is out of range"),
])
def test_a_debian_pin_is_checked_for_what_it_becomes(tmp_path: Path, change, words):
    data = yaml.safe_load((LOCKS / "cpu.lock.yaml").read_text())
    data["base"]["debian"]["debs"][0].update(change)
    import hashlib
    import json

    from envkit.lock.model import NOT_HASHED, parse_lockfile

    body = json.dumps({k: v for k, v in data.items() if k not in NOT_HASHED}, sort_keys=True, separators=(",", ":"))
    data["content_sha256"] = hashlib.sha256(body.encode()).hexdigest()  # resealed, as anyone can
    with pytest.raises(LockfileError, match=words):
        parse_lockfile(data, source="x.lock.yaml")
