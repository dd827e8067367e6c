"""`envkit lock` with the resolvers answered offline: a Debian base pinned by its .debs (no engine needed), a registry
base by digest (verified or not), a local image said to build only where it is; re-locking keeps expected IDs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envkit.lock import debian as lock_debian
from envkit.lock.locking import lock_spec
from envkit.lock.model import DebPin, ImageParts, PinnedPackage, load_lockfile, write_lockfile
from envkit.settings import LABEL_BASE_PYTHON

from .fakes import FakeEngine


class Resolver:
    """Answers every requirement with one wheel found on the locking machine's disk."""

    def resolve(self, requirements, target, sources):
        return [PinnedPackage("six", "1.17.0", "six-1.17.0-py2.py3-none-any.whl",
                              "file:///opt/pypi/files/six-1.17.0-py2.py3-none-any.whl", "a" * 64)]


DEBS = [DebPin("libc6", "2.36-9+deb12u10", "amd64", "pool/main/g/glibc/libc6_2.36-9+deb12u10_amd64.deb", "b" * 64, 10),
        DebPin("python3.11", "3.11.2-6+deb12u6", "amd64", "pool/main/p/python3.11/python3.11_3.11.2-6+deb12u6_amd64.deb",
               "c" * 64, 20)]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lock_debian, "mmdebstrap_version", lambda: "1.3.5")
    monkeypatch.setattr(lock_debian, "resolve_base", lambda suite, packages, arch, cache_dir=None: list(DEBS))
    monkeypatch.setattr("envkit.lock.indexes.public_url", lambda *a, **k: None)
    monkeypatch.setattr("envkit.lock.locking.public_url", lambda name, version, filename, sha256:
                        f"https://files.example/{filename}")
    monkeypatch.setattr("envkit.lock.pipconfig.host_pip_sources", lambda: __import__(
        "envkit.lock.resolver", fromlist=["Sources"]).Sources(find_links=("/opt/wheels",)))


def spec(tmp_path: Path, base: str) -> Path:
    path = tmp_path / "s.envkit.yaml"
    path.write_text(f"name: s\npython: '3.11'\nbase: {base}\npackages: [six]\nfind_links: [/opt/wheels]\n")
    return path


def test_a_debian_base_is_pinned_by_its_debs_without_an_engine(tmp_path, offline):
    def no_engine():
        raise AssertionError("a Debian base needs no engine")

    result = lock_spec(None, spec(tmp_path, "envkit/base:bookworm-py3.11"), tmp_path / "s.lock.yaml",
                       resolver=Resolver())
    lock = load_lockfile(result.path)
    assert lock.base.kind == "debian" and lock.base.python == "3.11.2" and lock.base.digest is None
    assert lock.base.debian.debs == tuple(DEBS) and lock.base.debian.mmdebstrap == "1.3.5"
    assert lock.packages[0].url == "https://files.example/six-1.17.0-py2.py3-none-any.whl"
    assert lock.sources == {"index_url": [], "indexes": [], "find_links": []}  # /opt/wheels is this machine's
    assert "/opt/" not in result.path.read_text()


def test_relocking_the_same_content_keeps_the_expected_ids(tmp_path, offline):
    out = tmp_path / "s.lock.yaml"
    first = lock_spec(None, spec(tmp_path, "envkit/base:bookworm-py3.11"), out, resolver=Resolver()).lock
    parts = ImageParts("d" * 64, ("sha256:" + "e" * 64,), "sha256:" + "f" * 64)
    write_lockfile(first.with_images({"native": "sha256:" + "1" * 64}, parts), out)
    again = lock_spec(None, spec(tmp_path, "envkit/base:bookworm-py3.11"), out, resolver=Resolver()).lock
    assert again.images == {"native": "sha256:" + "1" * 64} and again.image_parts == parts


def test_a_suite_that_does_not_ship_the_python_is_refused(tmp_path, offline):
    from envkit.errors import SpecError

    with pytest.raises(SpecError, match="ships Python 3.11, the spec asks for 3.12"):
        lock_spec(None, spec(tmp_path, "envkit/base:bookworm-py3.11").parent / _respec(tmp_path), None,
                  resolver=Resolver())


def _respec(tmp_path: Path) -> str:
    (tmp_path / "p.envkit.yaml").write_text("name: p\npython: '3.12'\nbase: envkit/base:bookworm-py3.11\n"
                                            "packages: [six]\n")
    return "p.envkit.yaml"


def test_a_registry_base_is_pinned_by_digest_verified_when_the_engine_can_pull_it(tmp_path, offline):
    engine = FakeEngine()
    iid = engine.add_image("py", labels={LABEL_BASE_PYTHON: "3.11.9"})
    digest = "sha256:" + hashlib.sha256(b"manifest").hexdigest()
    engine.registries["reg.example"] = {f"reg.example/py@{digest}": iid}
    lock = lock_spec(engine, spec(tmp_path, f"reg.example/py:3.11@{digest}"), tmp_path / "r.lock.yaml",
                     resolver=Resolver()).lock
    assert (lock.base.kind, lock.base.digest, lock.base.image_id, lock.base.python) == \
        ("registry", digest, iid, "3.11.9")
    assert ("pull", f"reg.example/py@{digest}") in engine.calls  # by digest, the tag dropped


def test_a_registry_base_that_cannot_be_pulled_here_is_pinned_unverified_and_said(tmp_path, offline):
    engine = FakeEngine(down={"reg.example"})
    digest = "sha256:" + "9" * 64
    result = lock_spec(engine, spec(tmp_path, f"reg.example/py@{digest}"), tmp_path / "r.lock.yaml",
                       resolver=Resolver())
    assert result.lock.base.python == "3.11" and result.lock.base.image_id is None
    assert any("could not be pulled here" in n and "unverified" in n for n in result.notes)


def test_a_local_only_base_is_pinned_by_id_and_said_to_build_only_there(tmp_path, offline):
    engine = FakeEngine()
    iid = engine.add_image("mybase:1", labels={LABEL_BASE_PYTHON: "3.11.2"})
    result = lock_spec(engine, spec(tmp_path, "mybase:1"), tmp_path / "l.lock.yaml", resolver=Resolver())
    assert result.lock.base.kind == "image" and result.lock.base.digest == iid
    assert any("builds only on an engine that has that image" in n for n in result.notes)
