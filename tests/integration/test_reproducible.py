"""The committed lock builds the same image anywhere: on a fresh engine with an empty envkit cache, `envkit build
lockfiles/cpu.lock.yaml` prints the image ID the lock records; two engines with separate data roots and caches get
one ID; a registry base is pulled by digest; --check rebuilds from nothing; bad pins are named in one line.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from envkit.errors import FetchError, HashMismatchError, ImageMismatchError, RegistryError
from envkit.lock.model import load_lockfile, write_lockfile

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker
REFRESH = "run `envkit build lockfiles/cpu.lock.yaml --pin` and commit lockfiles/cpu.lock.yaml"


def test_the_committed_lock_records_the_ids_this_envkit_builds(cpu_lock, cpu_image):
    """The IDs in lockfiles/ follow envkit's in-image files, version and recipe: this fails (one line, the command
    that refreshes them) when one of those changed and the lock was not pinned again."""
    lock = load_lockfile(cpu_lock)
    r = envkit("build", str(cpu_lock), "--cpu-profile", "portable", "--json", timeout=1800)
    assert r.returncode == 0, r.stderr
    built = {"native": cpu_image, "portable": json.loads(r.stdout)["image_id"]}
    if built != lock.images:
        pytest.fail(f"lockfiles/cpu.lock.yaml records {lock.images}, this envkit builds {built}: {REFRESH}",
                    pytrace=False)


@pytest.mark.slow
def test_a_fresh_engine_with_an_empty_cache_builds_the_recorded_image(cpu_lock, cpu_image, host_b, tmp_path):
    """The issue's "done when": engine B (its own data root, nothing in it) and an empty envkit cache build the
    committed lock to the image ID the lock records, and engine A's build (this machine's cache) is the same."""
    lock = load_lockfile(cpu_lock)
    env = {"DOCKER_HOST": host_b["DOCKER_HOST"], "ENVKIT_CACHE": str(tmp_path / "empty-cache")}
    r = envkit("build", str(ROOT / "lockfiles" / "cpu.lock.yaml"), env=env, timeout=3000)
    assert r.returncode == 0, r.stderr
    on_b = r.stdout.strip()
    n = len(lock.base.debian.debs)
    assert f"(made from {n} pinned .debs)" in r.stderr  # B's empty cache: the base made from the lock's .debs
    assert on_b == cpu_image, f"engine B built {on_b}, engine A {cpu_image}: not reproducible"
    assert on_b == lock.images["native"], f"both engines built {on_b}, the lock records {lock.images['native']}: " \
                                          f"{REFRESH}"
    assert "matches the lock" in r.stderr
    again = json.loads(envkit("build", str(cpu_lock), "--json", env=env).stdout)
    assert again["cache_hit"] and again["layers"]["base"] == list(lock.image_parts.base_layers)


def test_a_registry_base_is_pulled_by_digest_on_a_fresh_engine(tiny_lock, tiny_image, host_b, tmp_path):
    """The tests' base lives in the session's registry: engine B pulls it by digest and builds tiny's image to the ID
    engine A built."""
    base_id = load_lockfile(tiny_lock).base.image_id
    with contextlib.suppress(Exception):  # engine B may hold that image already (the CPU lock's base is the same)
        host_b["client"].images.remove(base_id, force=True)
    env = {"DOCKER_HOST": host_b["DOCKER_HOST"], "ENVKIT_CACHE": str(tmp_path / "cache-b")}
    r = envkit("build", str(tiny_lock), "--json", env=env, timeout=1800)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["image_id"] == tiny_image
    assert out["base"].startswith("pulled ") and "@sha256:" in out["base"]


def test_a_registry_base_whose_digest_is_gone_is_one_line(tiny_lock, tmp_path):
    lock = load_lockfile(tiny_lock)
    gone = "sha256:" + "0" * 64
    base = replace(lock.base, ref=lock.base.ref.split("@")[0] + "@" + gone, digest=gone, image_id=None)
    path = tmp_path / "gone.lock.yaml"
    write_lockfile(replace(lock, base=base).sealed(), path)
    r = envkit("build", str(path))
    assert r.returncode == RegistryError.exit_code, r.stderr
    [error] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert error.startswith("error: the base ") and "is gone from its registry" in error
    assert "lock the spec again" in r.stderr and "Traceback" not in r.stderr


def test_check_rebuilds_from_nothing_and_keeps_a_differing_image(tiny_lock, tiny_image, tmp_path):
    r = envkit("build", str(tiny_lock), "--check", "--json", timeout=1800)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["image_id"] == tiny_image and out["check"]["previous"] == tiny_image and not out["cache_hit"]
    lock = load_lockfile(tiny_lock)
    path = tmp_path / "tiny-expects-other.lock.yaml"
    write_lockfile(lock.with_images({"native": "sha256:" + "1" * 64}, None), path)
    r = envkit("build", str(path), "--check", timeout=1800)
    assert r.returncode == ImageMismatchError.exit_code
    assert f"{tiny_image} differs from the lock's sha256:{'1' * 64}" in r.stderr
    assert r.stdout.strip() == tiny_image  # printed, and kept
    r = envkit("build", str(path))  # without --check a differing ID is said, exit 0
    assert r.returncode == 0 and "differs from the lock's" in r.stderr


def _with_deb(cpu_lock: Path, tmp_path: Path, **change) -> Path:
    lock = load_lockfile(cpu_lock)
    debs = list(lock.base.debian.debs)
    i = next(i for i, d in enumerate(debs) if d.name == "zlib1g")
    debs[i] = replace(debs[i], **change)
    base = replace(lock.base, debian=replace(lock.base.debian, debs=tuple(debs)))
    path = tmp_path / "deb.lock.yaml"
    write_lockfile(replace(lock, base=base, images={}, image_parts=None).sealed(), path)
    return path


def test_a_deb_no_source_has_is_named(cpu_lock, debian_base, tmp_path):
    path = _with_deb(cpu_lock, tmp_path, version="1:9.9.9-1", filename="pool/main/z/zlib/zlib1g_9.9.9-1_amd64.deb",
                     sha256="2" * 64)
    r = envkit("build", str(path), timeout=900)
    assert r.returncode == FetchError.exit_code, r.stderr
    [first] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "Debian package zlib1g 1:9.9.9-1 (amd64) is on no source" in first and "zlib1g_9.9.9-1_amd64.deb" in first
    assert "snapshot.debian.org" in r.stderr and "Traceback" not in r.stderr


def test_a_deb_whose_bytes_differ_names_the_file_and_both_hashes(cpu_lock, debian_base, tmp_path):
    path = _with_deb(cpu_lock, tmp_path, sha256="3" * 64)
    r = envkit("build", str(path), timeout=900)
    assert r.returncode == HashMismatchError.exit_code, r.stderr
    [first] = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "zlib1g_" in first and f"expected sha256 {'3' * 64}" in first and "found " in first
