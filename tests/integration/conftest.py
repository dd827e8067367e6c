"""Fixtures on the real Docker engine: the committed CPU lock and its image, a tiny image, a local registry, a second
engine.

The CPU lock is used as committed (no relocking). Its Debian base and its image are caches shared by every
integration test (and by the README's demo): made once per machine (envkit's cache keeps the base) and kept. The
tests' own specs name that base through the session's registry, by digest. Throwaway images and containers made by
a test carry the label io.envkit.test and are removed at the end of the session.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def envkit(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 900,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=timeout, input=input)


@pytest.fixture(scope="session")
def client():
    import docker

    return docker.from_env(timeout=600)


@pytest.fixture(scope="session")
def session_dir():
    d = Path(tempfile.mkdtemp(prefix="envkit-it-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cpu_lock() -> Path:
    """The committed CPU lock, as it is: its Debian base pinned by .debs, its expected image IDs."""
    return ROOT / "lockfiles" / "cpu.lock.yaml"


@pytest.fixture(scope="session")
def debian_base(cpu_lock) -> str:
    """The committed lock's Debian base, made from its pinned .debs (about a minute the first time on a machine, then
    kept in envkit's cache); its image ID."""
    r = envkit("base", "make", str(cpu_lock), "--json", timeout=1800)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["image_id"]


@pytest.fixture(scope="session")
def base_image(debian_base, registry) -> str:
    """The base of the tests' own specs: the Debian base pushed to the session's registry, named by digest (a
    registry base: `envkit lock` pins that digest and needs no mmdebstrap run)."""
    from envkit.engine import connect

    repo = f"{registry}/envkit-test/base"
    ref = connect().push(debian_base, repo, "bookworm")
    yield ref
    subprocess.run(["docker", "rmi", f"{repo}:bookworm"], capture_output=True)  # the tag only: the image is shared


@pytest.fixture(scope="session")
def cpu_image(cpu_lock) -> str:
    """The CPU image (torch 2.13.0 CPU, numpy, scikit-learn): a few minutes to build from nothing, then a cache hit."""
    r = envkit("build", str(cpu_lock), "--json", timeout=1800)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["image_id"]


@pytest.fixture(scope="session")
def tiny_spec(base_image, session_dir) -> Path:
    spec = session_dir / "tiny.envkit.yaml"
    spec.write_text(f"name: tiny\npython: '3.11'\nbase: {base_image}\npackages: [six]\n")
    return spec


@pytest.fixture(scope="session")
def tiny_lock(tiny_spec, session_dir) -> Path:
    out = session_dir / "tiny.lock.yaml"
    r = envkit("lock", str(tiny_spec), "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def tiny_image(tiny_lock) -> str:
    r = envkit("build", str(tiny_lock), "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["image_id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def registry(session_dir):
    """Debian's docker-registry on 127.0.0.1 with a config and storage of the test's own."""
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry; .ci/setup-host does)")
    port = free_port()
    storage = session_dir / "registry"
    storage.mkdir()
    config = session_dir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: " + str(storage)
        + "\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:" + str(port) + "\n"
    )
    log = (session_dir / "registry.log").open("w")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("docker-registry did not start; see " + str(session_dir / "registry.log"))
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session", autouse=True)
def _cleanup_test_objects():
    yield
    try:
        import docker

        c = docker.from_env(timeout=60)
        for ctr in c.containers.list(all=True, filters={"label": "io.envkit.test"}):
            ctr.remove(force=True)
        for img in c.images.list(filters={"label": "io.envkit.test"}):
            c.images.remove(img.id, force=True)
    except Exception:  # noqa: BLE001 - cleanup must never mask a test result
        pass


@pytest.fixture(scope="session")
def host_b(session_dir):
    """A second Docker engine on this machine: its own data root, exec root, socket and bridge, no images.

    Its bridge is one the fixture makes (`ip link add`); `--bridge none` would delete the first engine's docker0.
    """
    if shutil.which("dockerd") is None or shutil.which("ip") is None:
        pytest.skip("dockerd or ip (iproute2) missing; .ci/setup-host installs them")
    root = Path(tempfile.mkdtemp(prefix="hostb-", dir="/tmp"))
    bridge = f"envkitb{os.getpid() % 10000}"
    subprocess.run(["ip", "link", "add", "name", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("w")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
         str(root / "dockerd.pid"), "-H", f"unix://{sock}", "-b", bridge, "--iptables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT)
    import docker

    deadline = time.monotonic() + 60
    while True:
        try:
            docker.DockerClient(base_url=f"unix://{sock}", timeout=5).ping()
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                subprocess.run(["ip", "link", "del", bridge])
                pytest.fail(f"second dockerd did not start; see {root / 'dockerd.log'}")
            time.sleep(0.5)
    store = root / "store"
    yield {"DOCKER_HOST": f"unix://{sock}", "ENVKIT_HOME": str(store), "client": docker.DockerClient(
        base_url=f"unix://{sock}", timeout=600)}
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    subprocess.run(["ip", "link", "del", bridge])
    subprocess.run(["umount", "-R", str(root / "data")], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
