"""The content-addressed wheel cache: fetched once, verified every time, tampering refused and named."""

import hashlib
from pathlib import Path

import pytest

from envkit.errors import FetchError, HashMismatchError
from envkit.image.wheels import cache_path, ensure_wheels
from envkit.lock.localsources import LocalSources
from envkit.lock.model import PinnedPackage


def pin_for(path: Path, sha: str | None = None) -> PinnedPackage:
    return PinnedPackage("demo", "1.0", path.name, path.as_uri(), sha or hashlib.sha256(path.read_bytes()).hexdigest())


def test_fetch_then_cache_hit(tmp_path: Path):
    src = tmp_path / "demo-1.0-py3-none-any.whl"
    src.write_bytes(b"wheel bytes" * 1000)
    cache = tmp_path / "cache"
    pin = pin_for(src)
    [path] = ensure_wheels((pin,), cache, sources=LocalSources(find_links=(tmp_path,)))
    assert path == cache_path(cache, pin) and path.read_bytes() == src.read_bytes()
    src.unlink()  # the second time needs no source at all
    assert ensure_wheels((pin,), cache, sources=LocalSources(find_links=(tmp_path,))) == [path]


def test_tampered_cached_wheel_is_refused_and_named(tmp_path: Path):
    src = tmp_path / "demo-1.0-py3-none-any.whl"
    src.write_bytes(b"original")
    cache = tmp_path / "cache"
    [path] = ensure_wheels((pin_for(src),), cache, sources=LocalSources(find_links=(tmp_path,)))
    path.write_bytes(b"tampered")
    with pytest.raises(HashMismatchError) as err:
        ensure_wheels((pin_for(src),), cache, sources=LocalSources(find_links=(tmp_path,)))
    assert str(path) in str(err.value) and "rm" in err.value.hint


def test_source_not_matching_lock_never_enters_cache(tmp_path: Path):
    src = tmp_path / "demo-1.0-py3-none-any.whl"
    src.write_bytes(b"changed upstream")
    cache = tmp_path / "cache"
    with pytest.raises(HashMismatchError):
        ensure_wheels((pin_for(src, sha="0" * 64),), cache, sources=LocalSources(find_links=(tmp_path,)))
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_missing_source(tmp_path: Path):
    pin = PinnedPackage("demo", "1.0", "demo.whl", (tmp_path / "gone.whl").as_uri(), "0" * 64)
    with pytest.raises(FetchError, match="no source has demo.whl"):
        ensure_wheels((pin,), tmp_path / "cache", sources=LocalSources(find_links=(tmp_path,)))
