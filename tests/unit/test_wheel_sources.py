"""Wheels by hash, not by place: the lock's URL is a hint, then the spec's indexes, then the host's; a lock names
public URLs only (no local path, no password). A package index on 127.0.0.1 stands in for PyPI and a mirror."""

from __future__ import annotations

import hashlib
import http.server
import threading
from dataclasses import replace

import pytest

from envkit.errors import FetchError, HashMismatchError
from envkit.image.wheels import WheelSources, ensure_wheels
from envkit.lock.indexes import Found, find_in_index, public_url, strip_credentials
from envkit.lock.locking import public_sources, publish_urls
from envkit.lock.model import PinnedPackage
from envkit.lock.spec import Spec

NAME = "demo-1.0-py3-none-any.whl"
GOOD = b"the pinned wheel"
SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture
def index(tmp_path):
    """Two simple indexes on 127.0.0.1: ``good`` serves the pinned bytes, ``bad`` other bytes under the same name;
    ``/hits`` counts the requests for files."""
    root = tmp_path / "www"
    for name, data in (("good", GOOD), ("bad", b"other bytes")):
        (root / name / "demo").mkdir(parents=True)
        (root / name / "files").mkdir()
        (root / name / "files" / NAME).write_bytes(data)
        (root / name / "demo" / "index.html").write_text(f'<a href="../files/{NAME}">{NAME}</a>')
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()


def pin(url: str | None) -> PinnedPackage:
    return PinnedPackage("demo", "1.0", NAME, url, SHA)


def test_the_locks_url_is_only_a_hint_the_next_source_that_has_the_bytes_wins(index, tmp_path):
    base, hits = index
    sources = WheelSources(spec_indexes=(f"{base}/bad",), host_indexes=(f"{base}/good",))
    [path] = ensure_wheels((pin(f"{base}/gone/{NAME}"),), tmp_path / "cache", sources=sources)
    assert path.read_bytes() == GOOD
    assert hits.index(f"/gone/{NAME}") < hits.index(f"/bad/files/{NAME}") < hits.index(f"/good/files/{NAME}")


def test_no_source_names_the_wheel_and_every_place_tried(index, tmp_path):
    base, _ = index
    sources = WheelSources(spec_indexes=(f"{base}/nothing",))
    with pytest.raises(FetchError) as err:
        ensure_wheels((pin(f"https://user:secret@{base[7:]}/gone/{NAME}"),), tmp_path / "cache", sources=sources)
    message = err.value.message
    assert message.startswith(f"no source has {NAME} (sha256 {SHA[:16]}...)")
    assert f"/gone/{NAME}" in message and f"{base}/nothing (does not list it)" in message
    assert "secret" not in message  # a URL is shown without its password


def test_only_other_bytes_is_a_hash_mismatch_naming_the_file_and_both_hashes(index, tmp_path):
    base, _ = index
    with pytest.raises(HashMismatchError) as err:
        ensure_wheels((pin(f"{base}/bad/files/{NAME}"),), tmp_path / "cache", sources=WheelSources())
    other = hashlib.sha256(b"other bytes").hexdigest()
    assert f"{NAME}: the lock pins sha256 {SHA}, found {other} from {base}/bad/files/{NAME}" in err.value.message
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


def test_an_index_is_read_as_pep_503_and_its_stated_hash_is_trusted_to_skip(index):
    base, _ = index
    found = find_in_index(f"{base}/good", "Demo", NAME)
    assert found == Found(f"{base}/good/files/{NAME}", None)
    assert find_in_index(f"{base}/good", "other", NAME) is None  # 404: not there, not an error


def test_credentials_never_reach_a_lock():
    assert strip_credentials("https://user:tok@example.org/simple/x/a.whl#sha256=1") == \
        "https://example.org/simple/x/a.whl#sha256=1"
    spec = Spec(name="x", python="3.11", base="b", packages=("demo",), index_url="https://u:p@mirror.example/simple",
                indexes=("file:///opt/pypi/simple", "https://extra.example/simple"), find_links=("/opt/wheels",))
    assert public_sources(spec) == {"index_url": ["https://mirror.example/simple"],
                                    "indexes": ["https://extra.example/simple"], "find_links": []}


def test_local_hits_become_public_urls_or_none(tmp_path):
    pins = [pin(f"file:///opt/pypi/files/{NAME}"), replace(pin("https://a:b@files.example/x.whl"), name="other"),
            replace(pin("/opt/wheels/w.whl"), name="nowhere")]
    public = {"demo": "https://files.example/demo.whl"}
    out, notes = publish_urls(pins, lookup=lambda p: public.get(p.name))
    assert [p.url for p in out] == ["https://files.example/demo.whl", "https://files.example/x.whl", None]
    assert any("has no public URL" in n for n in notes)


def test_a_pytorch_local_build_gets_pytorchs_index_as_its_hint(index):
    base, _ = index
    url = public_url("torch", "2.13.0+cpu", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", "a" * 64,
                     index_url=f"{base}/good")
    assert url == "https://download.pytorch.org/whl/cpu/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"


def test_a_wheel_found_in_the_hosts_pip_folder_needs_no_network(tmp_path, monkeypatch):
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / NAME).write_bytes(GOOD)
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "envkit"))
    from envkit.lock import localsources
    from envkit.lock.localsources import LocalSources

    localsources._host_sources.cache_clear()
    try:
        [path] = ensure_wheels((pin(None),), tmp_path / "cache", sources=WheelSources(LocalSources(include_host=True)))
    finally:
        localsources._host_sources.cache_clear()
    assert path.read_bytes() == GOOD
