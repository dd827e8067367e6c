"""envkit lock / build on the real engine: the committed lock's image, the cache, pushes, and builds that fail."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from envkit.errors import (
    BuildError,
    EngineUnavailableError,
    HashMismatchError,
    ImageNotFoundError,
    PlatformError,
)
from envkit.image.wheels import cache_path
from envkit.lock.model import Lockfile, PinnedPackage, load_lockfile, write_lockfile

from .conftest import ROOT, envkit

pytestmark = pytest.mark.docker


def pins(lock) -> set[tuple[str, str, str, str]]:
    return {(p.name, p.version, p.filename, p.sha256) for p in lock.packages}


@pytest.mark.slow
def test_lock_reproduces_the_committed_pins_with_nothing_of_this_machine(tmp_path):
    """`envkit lock` of the CPU spec: the committed wheel pins, a Debian base pinned by .debs (resolved now with
    mmdebstrap: the .debs may have moved on since), and no local path or credential of this machine in the lock."""
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("resolving a Debian base needs root and mmdebstrap (.ci/setup.d/10-mmdebstrap.sh)")
    out = tmp_path / "cpu.lock.yaml"
    r = envkit("lock", str(ROOT / "lockfiles" / "cpu.envkit.yaml"), "-o", str(out), timeout=1200)
    assert r.returncode == 0, r.stderr
    fresh, committed = load_lockfile(out), load_lockfile(ROOT / "lockfiles" / "cpu.lock.yaml")
    assert pins(fresh) == pins(committed) and fresh.environment == committed.environment
    assert fresh.base.kind == "debian" and len(fresh.base.debian.debs) > 100
    assert {d.name for d in fresh.base.debian.debs} >= {"python3.11", "python3-pip", "libc6", "ca-certificates"}
    text = out.read_text()
    assert "file://" not in text and "/opt/" not in text and str(Path.home()) not in text
    assert all(p.url.startswith("https://") for p in fresh.packages)


def test_cpu_image_carries_determinism_env_and_lock_label(client, cpu_image, cpu_lock):
    attrs = client.images.get(cpu_image).attrs
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert env["PYTHONHASHSEED"] == "0"
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    labels = attrs["Config"]["Labels"]
    assert labels["io.envkit.lock.sha256"] == load_lockfile(cpu_lock).content_sha256
    assert labels["io.envkit.version"]
    assert labels["org.opencontainers.image.base.name"] == load_lockfile(cpu_lock).base.ref
    assert labels["io.envkit.base.packages-sha256"]  # the Debian base's own label, kept under envkit's


def test_second_build_is_a_cache_hit_with_the_same_id(cpu_image, cpu_lock):
    r = envkit("build", str(cpu_lock), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cache_hit"] is True and out["image_id"] == cpu_image


def test_image_has_torch_and_hash_based_bytecode(client, cpu_image):
    script = (
        "import importlib.util, torch, numpy, sklearn;"
        "p = importlib.util.cache_from_source(torch.__file__);"
        "flags = int.from_bytes(open(p, 'rb').read()[4:8], 'little');"
        "print(torch.__version__, flags)"
    )
    out = client.containers.run(cpu_image, ["python", "-c", script], remove=True, network_mode="none").decode()
    version, flags = out.split()
    assert version == "2.13.0+cpu"
    assert flags == "1"  # hash-based, unchecked: no timestamps, never recompiled


def test_tampered_wheel_in_cache_is_refused(tiny_lock, tiny_image, tmp_path):
    lock = load_lockfile(tiny_lock)
    env = {"ENVKIT_CACHE": str(tmp_path / "cache")}
    r = envkit("build", str(tiny_lock), "--no-cache", "--json", env=env)
    assert r.returncode == 0, r.stderr
    pkg = lock.packages[0]
    cached = cache_path(tmp_path / "cache" / "wheels", pkg)
    cached.write_bytes(cached.read_bytes() + b"tampered")
    r = envkit("build", str(tiny_lock), "--no-cache", env=env)
    assert r.returncode == HashMismatchError.exit_code
    assert str(cached) in r.stderr and "Traceback" not in r.stderr


def test_push_reports_the_registry_digest(client, tiny_image, tiny_lock, registry):
    repo = f"{registry}/envkit-test/tiny"
    r = envkit("build", str(tiny_lock), "--push", repo, "--json")
    assert r.returncode == 0, r.stderr
    ref = json.loads(r.stdout)["repo_digest"]
    assert ref.startswith(repo + "@sha256:")
    assert client.images.get_registry_data(ref).id == ref.split("@", 1)[1]


def test_engine_down_says_how_to_start_it(tiny_lock):
    r = envkit("build", str(tiny_lock), env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert r.returncode == EngineUnavailableError.exit_code
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error:") and "not reachable" in lines[0]
    assert lines[1].startswith("hint:") and "dockerd" in lines[1]


def test_base_image_that_does_not_exist(tmp_path, registry):
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\npython: '3.11'\nbase: {registry}/envkit-test/no-such-base:1\npackages: [six]\n")
    r = envkit("lock", str(spec), "-o", str(tmp_path / "s.lock.yaml"))
    assert r.returncode == ImageNotFoundError.exit_code
    assert "no-such-base:1 does not exist on this Docker engine and cannot be pulled" in r.stderr
    assert "envkit/base:bookworm-py3.11" in r.stderr  # the hint names a base that builds anywhere
    assert not (tmp_path / "s.lock.yaml").exists()


def test_lock_for_another_platform_is_refused_at_build(tiny_spec, tmp_path):
    spec = tmp_path / "arm.yaml"
    data = yaml.safe_load(tiny_spec.read_text())
    spec.write_text(yaml.safe_dump({**data, "name": "arm", "platform": "aarch64-manylinux_2_28"}))
    r = envkit("lock", str(spec), "-o", str(tmp_path / "arm.lock.yaml"))
    assert r.returncode == 0, r.stderr
    r = envkit("build", str(tmp_path / "arm.lock.yaml"))
    assert r.returncode == PlatformError.exit_code
    assert "targets linux/aarch64" in r.stderr


def test_failed_build_shows_pips_words(tiny_lock, tmp_path):
    """A wheel for another Python passes the hash check, but pip in the image cannot install it: the log shows why."""
    from tests.unit.test_resolver import make_wheel

    good = load_lockfile(tiny_lock)
    wheel = make_wheel(tmp_path, "oddball", "1.0", tag="cp39-cp39-manylinux_2_17_x86_64")
    import hashlib

    pin = PinnedPackage("oddball", "1.0", wheel.name, wheel.as_uri(), hashlib.sha256(wheel.read_bytes()).hexdigest())
    bad = Lockfile(**{**good.__dict__, "name": "oddball", "packages": (pin,), "content_sha256": ""}).sealed()
    path = tmp_path / "oddball.lock.yaml"
    write_lockfile(bad, path)
    # A lock written by the test, whose wheel no configured source has: read from its own path by opt-in.
    r = envkit("build", str(path), env={"ENVKIT_CACHE": str(tmp_path / "cache"), "ENVKIT_ALLOW_FILE_URLS": "1"})
    assert r.returncode == BuildError.exit_code
    assert "error: installing the venv failed (exit 1): ERROR:" in r.stderr
    assert "--- log of the install ---" in r.stderr and "Traceback" not in r.stderr
    assert "oddball" in r.stderr  # pip's words about the wheel, from the install's log
