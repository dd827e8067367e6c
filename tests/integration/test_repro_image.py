"""Reproducible images on the real engine: `docker load` gives the ID envkit computed, and two builds, on two engines
with separate caches, give one ID.

The Debian tests make the base with mmdebstrap (root, Debian's mirror reachable once to resolve); they print the
figures they measure (`pytest -s`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from envkit.image import assemble, debian, oci
from envkit.image.render import image_env, in_image_files, render_requirements
from envkit.image.wheels import ensure_wheels
from envkit.lock.model import load_lockfile
from envkit.settings import IN_IMAGE_PACKAGE

ROOT = Path(__file__).resolve().parents[2]
EPOCH = 1_700_000_000
# Not io.envkit.test: a session-wide clean-up (ours, or a parallel session's on a shared engine) removes everything so
# labelled, running containers included. What these tests make they remove themselves, by ID (`--rm`, `rmi`).
TEST_LABEL = "io.envkit.test.repro"
TEST_LABELS = {TEST_LABEL: "1"}

pytestmark = pytest.mark.docker


def docker(*args: str, host: str | None = None, timeout: float = 900) -> str:
    """The docker CLI (on the second engine when host is given); fails the test with its stderr."""
    cmd = ["docker", *(["-H", host] if host else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])}...: {proc.stderr.strip()[-2000:]}"
    return proc.stdout


def load(archive: Path, host: str | None = None) -> tuple[str, float]:
    t0 = time.monotonic()
    out = docker("load", "-q", "-i", str(archive), host=host)
    seconds = time.monotonic() - t0
    tag = out.strip().rsplit(" ", 1)[-1]
    return docker("image", "inspect", "--format", "{{.Id}}", tag, host=host).strip(), seconds


def test_docker_load_gives_the_computed_id_and_keeps_the_config(tmp_path):
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("hello\n")
    os.symlink("hello", tree / "bin" / "hi")
    layer = oci.write_layer(tree, tmp_path / "layer.tar", EPOCH, prefix="opt/x")
    config = oci.image_config(diff_ids=[layer.diff_id], epoch=EPOCH, env={"A": "1"}, labels=TEST_LABELS,
                              working_dir="/work", cmd=["sh"])
    expected = oci.write_docker_archive(tmp_path / "image.tar", config, [layer], repo_tags=["envkit-test/oci:1"])
    got, _ = load(tmp_path / "image.tar")
    try:
        assert got == expected == oci.image_id(config)
        assert docker("image", "inspect", "--format", "{{.Created}}", got).strip() == "2023-11-14T22:13:20Z"
        # a `docker save` of it reads back as the same config and layer, ready to be a base
        docker("save", "-o", str(tmp_path / "saved.tar"), got)
        saved = oci.read_docker_archive(tmp_path / "saved.tar", verify=True)
        assert saved.image_id == expected and [b.diff_id for b in saved.layers] == [layer.diff_id]
    finally:
        docker("rmi", "-f", got)


# --- a Debian base from pinned .debs, and the CPU lock's image on two engines ------------------------------------
@pytest.fixture(scope="module")
def work():
    root = Path(tempfile.mkdtemp(prefix="envkit-repro-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pins(work):
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("making a Debian base needs root and mmdebstrap (apt-get install mmdebstrap)")
    t0 = time.monotonic()
    resolved = debian.resolve_base("bookworm", cache_dir=work / "cache-a")
    print(f"\nresolve_base: {len(resolved)} .debs, {sum(p.size for p in resolved) / 1e6:.1f} MB, "
          f"{time.monotonic() - t0:.1f} s")
    return resolved


@pytest.fixture(scope="module")
def rootfs_a(pins, work):
    """The base from cache A (filled by the resolve run): every .deb cached, no network."""
    result = debian.make_rootfs(pins, work / "cache-a", EPOCH, work / "rootfs-a.tar", suite="bookworm")
    print(f"\nbase from cached .debs: {result.seconds:.1f} s, layer {result.layer.size / 1e6:.0f} MB")
    return result


@pytest.fixture(scope="module")
def rootfs_b(pins, work):
    """The base from an empty cache B: every .deb fetched from the mirrors first."""
    mirrors = sorted({s.uri for s in debian.host_sources("bookworm")})
    t0 = time.monotonic()
    debian.fetch_debs(pins, work / "cache-b", mirrors, local_dirs=())
    print(f"\ncold .deb fetch: {time.monotonic() - t0:.1f} s")
    return debian.make_rootfs(pins, work / "cache-b", EPOCH, work / "rootfs-b.tar", suite="bookworm")


@pytest.mark.slow
def test_two_runs_make_a_bit_identical_base_that_runs(rootfs_a, rootfs_b, work):
    assert rootfs_a.layer.diff_id == rootfs_b.layer.diff_id
    assert Path(rootfs_a.layer.path).read_bytes() == Path(rootfs_b.layer.path).read_bytes()
    config = debian.base_config(rootfs_a, "bookworm", EPOCH)
    labelled = json.loads(config)
    labelled["config"]["Labels"].update(TEST_LABELS)
    config = oci.canonical_json(labelled)
    expected = oci.write_docker_archive(work / "base.tar", config, [rootfs_a.layer],
                                        repo_tags=["envkit-test/repro-base:bookworm"])
    got, _ = load(work / "base.tar")
    try:
        assert got == expected
        out = docker("run", "--rm", "--network", "none", "--label", f"{TEST_LABEL}=1", got, "sh", "-c",
                     "python3 -c 'import platform, ssl, venv; print(platform.python_version())'; "
                     "cat /etc/envkit/base-packages.txt | wc -l; ls /var/lib/apt/lists /var/log")
        lines = out.split()
        assert lines[0] == rootfs_a.python and int(lines[1]) == len(rootfs_a.listing.splitlines())
    finally:
        docker("rmi", "-f", got)


def build_on(engine: str | None, rootfs: debian.RootfsResult, cache: Path, work: Path, name: str) -> dict:
    """The CPU lock's image made on one engine from one cache, as the builder will: returns IDs and figures."""
    lock = load_lockfile(ROOT / "lockfiles" / "cpu.lock.yaml")
    base_config = debian.base_config(rootfs, "bookworm", EPOCH)
    base = assemble.base_archive(base_config, [rootfs.layer])
    base_id, _ = load(_write(work / f"{name}-base.tar", base_config, [rootfs.layer]), host=engine)
    wheels = ensure_wheels(lock.packages, cache / "wheels")
    ctx = work / f"{name}-ctx"
    (ctx / "wheels").mkdir(parents=True)
    (ctx / "site").mkdir()
    for wheel in wheels:
        os.link(wheel, ctx / "wheels" / wheel.name)
    for file_name, data in in_image_files().items():  # the bootstrap: a package and its .pth hook
        (ctx / "site" / file_name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / "site" / file_name).write_bytes(data)
    (ctx / "requirements.lock.txt").write_text(render_requirements(lock))
    venv = work / f"{name}-venv"
    venv.mkdir()
    t0 = time.monotonic()
    docker("run", "--rm", "--network", "none", "--label", f"{TEST_LABEL}=1",
           "-v", f"{ctx / 'wheels'}:{assemble.WHEELS_MOUNT}:ro",
           "-v", f"{ctx / 'requirements.lock.txt'}:{assemble.REQUIREMENTS_MOUNT}:ro",
           "-v", f"{ctx / 'site'}:{assemble.SITE_MOUNT}:ro", "-v", f"{venv}:/opt/envkit/venv",
           base_id, *assemble.venv_command(lock.python), host=engine, timeout=1800)
    venv_seconds = time.monotonic() - t0
    t0 = time.monotonic()
    image = assemble.assemble(base, venv, work / f"{name}-image.tar", layer_path=work / f"{name}-venv.tar",
                              epoch=EPOCH, env=image_env(lock, "native"), labels=TEST_LABELS,
                              repo_tags=[f"envkit-test/repro-cpu:{name}"])
    assemble_seconds = time.monotonic() - t0
    loaded, load_seconds = load(work / f"{name}-image.tar", host=engine)
    try:  # it runs, right away (other sessions' clean-ups remove test-labelled images from a shared engine)
        torch = docker("run", "--rm", "--network", "none", "--label", f"{TEST_LABEL}=1", loaded, "python", "-c",
                       f"import torch, numpy, sklearn, {IN_IMAGE_PACKAGE}; print(torch.__version__)", host=engine)
    finally:
        docker("rmi", "-f", base_id, loaded, host=engine)
    return {"expected": image.image_id, "loaded": loaded, "venv_layer": image.venv_layer.diff_id,
            "torch": torch.strip(), "venv_s": round(venv_seconds, 1), "assemble_s": round(assemble_seconds, 1),
            "load_s": round(load_seconds, 1), "layer_mb": round(image.venv_layer.size / 1e6)}


def _write(path: Path, config: bytes, layers: list[oci.LayerBlob]) -> Path:
    oci.write_docker_archive(path, config, layers, repo_tags=[f"envkit-test/repro-base:{path.stem}"])
    return path


@pytest.mark.slow
def test_the_cpu_lock_gives_one_image_id_on_two_engines_with_separate_caches(rootfs_a, rootfs_b, work, host_b):
    a = build_on(None, rootfs_a, work / "cache-a", work, "a")
    b = build_on(host_b["DOCKER_HOST"], rootfs_b, work / "cache-b", work, "b")
    print(f"\nengine A: {a}\nengine B: {b}")
    assert a["loaded"] == a["expected"]
    assert b["loaded"] == b["expected"]
    assert a["venv_layer"] == b["venv_layer"]
    assert a["loaded"] == b["loaded"]
    assert a["torch"] == b["torch"] == "2.13.0+cpu"
