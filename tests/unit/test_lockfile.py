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
