"""A lock's file:// URL is a hint: local wheels come only from this host's own sources, or with the opt-in."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from envkit.errors import FetchError
from envkit.image.wheels import ensure_wheels
from envkit.lock import localsources
from envkit.lock.localsources import LocalSources, remember
from envkit.lock.resolver import Sources
from envkit.lock.model import BaseImage, Lockfile, PinnedPackage, Platform, load_lockfile

NAME = "demo-1.0-py3-none-any.whl"
REPO = Path(__file__).resolve().parents[2]


def wheel(folder: Path, data: bytes = b"wheel bytes") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    path.write_bytes(data)
    return path


def pin(url: str, data: bytes = b"wheel bytes") -> PinnedPackage:
    return PinnedPackage("demo", "1.0", NAME, url, hashlib.sha256(data).hexdigest())


def lock_with(pkg: PinnedPackage, find_links: list[str]) -> Lockfile:
    return Lockfile(
        name="t", python="3.11", platform=Platform("linux", "x86_64", "x86_64-manylinux_2_28"),
        base=BaseImage("b", "sha256:" + "b" * 64, "3.11.2"), requirements=("demo",),
        sources={"index_url": [], "indexes": [], "find_links": find_links}, environment={}, packages=(pkg,),
        generated_by="test").sealed()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "envkit-cache"))
    monkeypatch.delenv("ENVKIT_ALLOW_FILE_URLS", raising=False)
    localsources._host_sources.cache_clear()
    yield
    localsources._host_sources.cache_clear()


def cached_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


def test_a_lock_from_elsewhere_cannot_read_a_local_file(tmp_path: Path):
    """No hash oracle: the file is not read at all, so a right and a wrong hash give the same refusal."""
    secret = wheel(tmp_path / "elsewhere", b"private bytes")
    cache = tmp_path / "cache"
    for sha_of in (b"private bytes", b"a guess"):
        pkg = pin(secret.as_uri(), sha_of)
        lock = lock_with(pkg, [str(secret.parent)])  # its own sources name the folder: not trusted
        with pytest.raises(FetchError) as err:
            ensure_wheels(lock.packages, cache, sources=LocalSources.for_lock(lock))
        assert "ENVKIT_ALLOW_FILE_URLS=1" in err.value.hint
        assert "read only with ENVKIT_ALLOW_FILE_URLS=1" in str(err.value)
    assert cached_files(cache) == []


def test_a_fifo_under_a_wheels_name_is_refused_not_waited_on(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")
    (tmp_path / "x").mkdir()
    fifo = tmp_path / "x" / NAME
    os.mkfifo(fifo)
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            ensure_wheels((pin(fifo.as_uri()),), tmp_path / "cache")
            result.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(20)
    assert result, "ensure_wheels blocked on a FIFO"
    assert isinstance(result[0], FetchError) and "not a regular file" in str(result[0])


def test_a_url_that_is_not_the_wheels_file_is_never_read(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")  # even with the opt-in
    with pytest.raises(FetchError, match="which is not that wheel"):
        ensure_wheels((pin("file:///dev/zero"),), tmp_path / "cache")


def test_the_opt_in_reads_the_locks_own_path(tmp_path: Path, monkeypatch):
    src = wheel(tmp_path / "elsewhere")
    lock = lock_with(pin(src.as_uri()), [])
    monkeypatch.setenv("ENVKIT_ALLOW_FILE_URLS", "1")
    [path] = ensure_wheels(lock.packages, tmp_path / "cache", sources=LocalSources.for_lock(lock))
    assert path.read_bytes() == src.read_bytes()


def test_a_lock_made_here_reads_its_own_find_links(tmp_path: Path):
    src = wheel(tmp_path / "project-wheels")
    lock = lock_with(pin(src.as_uri()), [str(src.parent)])
    remember(lock, Sources(find_links=(str(src.parent),)))  # what `envkit lock` does after writing the lock
    [path] = ensure_wheels(lock.packages, tmp_path / "cache", sources=LocalSources.for_lock(lock))
    assert path.read_bytes() == src.read_bytes()
    # Another lock naming the same folder was not made here.
    other = lock_with(pin(src.as_uri()), [str(src.parent), "/elsewhere"])
    with pytest.raises(FetchError):
        ensure_wheels(other.packages, tmp_path / "cache2", sources=LocalSources.for_lock(other))


def test_the_hosts_pip_find_links_are_searched_by_file_name(tmp_path: Path, monkeypatch):
    src = wheel(tmp_path / "host-wheels")
    monkeypatch.setenv("PIP_FIND_LINKS", str(src.parent))
    lock = lock_with(pin(f"file:///opt/somewhere/the/locker/had/{NAME}"), [])
    [path] = ensure_wheels(lock.packages, tmp_path / "cache", sources=LocalSources.for_lock(lock))
    assert path.read_bytes() == src.read_bytes()


def test_a_local_simple_index_is_followed_like_pip(tmp_path: Path):
    files = tmp_path / "pypi" / "files"
    src = wheel(files)
    page = tmp_path / "pypi" / "simple" / "demo" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="../../files/{NAME}#sha256=00">{NAME}</a></body></html>')
    sources = LocalSources(indexes=(tmp_path / "pypi" / "simple",))
    assert sources.locate(NAME, "Demo") == src
    assert sources.locate("demo-2.0-py3-none-any.whl", "demo") is None


@pytest.mark.skipif(not Path("/opt/pypi/simple").is_dir() or not Path("/opt/wheels").is_dir(),
                    reason="this host has no local package mirror (/opt/pypi, /opt/wheels)")
def test_the_reference_cpu_lock_is_offered_by_this_hosts_sources():
    lock = load_lockfile(REPO / "lockfiles" / "cpu.lock.yaml")
    sources = LocalSources.for_lock(lock)
    missing = [p.filename for p in lock.packages if sources.locate(p.filename, p.name) is None]
    assert missing == []
