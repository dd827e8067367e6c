"""An archive envkit writes on the real engine: `docker load` gives the ID envkit computed, and a `docker save` of it
reads back as the same config and layers. The builds themselves are tested in test_reproducible.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from envkit.image import oci

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
