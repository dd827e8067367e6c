"""The rendered Dockerfile, checked as text (what `envkit build --dry-run` prints), for both reference locks."""

from pathlib import Path

import pytest

from envkit.cli import main
from envkit.image.render import plan_build, render_requirements
from envkit.lock.model import load_lockfile

LOCKS = Path(__file__).resolve().parents[2] / "lockfiles"


@pytest.fixture(params=["cpu", "cuda"])
def lock(request):
    return load_lockfile(LOCKS / f"{request.param}.lock.yaml")


def test_dockerfile_is_pinned_offline_and_deterministic(lock):
    plan = plan_build(lock)
    df = plan.dockerfile
    assert f"FROM {lock.base.digest} AS install" in df  # base by digest, never a tag
    assert "--no-index" in df and "--require-hashes" in df and "--no-deps" in df
    assert "--invalidation-mode unchecked-hash" in df  # deterministic bytecode
    assert 'PYTHONHASHSEED="0"' in df and 'CUBLAS_WORKSPACE_CONFIG=":4096:8"' in df
    assert f'"io.envkit.lock.sha256"="{lock.content_sha256}"' in df
    assert '"org.opencontainers.image.base.digest"' in df
    # classic builder only: no BuildKit syntax
    assert "# syntax=" not in df and "--mount=" not in df and "<<EOF" not in df
    # the wheels never reach the final stage
    final = df.split("\nFROM ")[-1]
    assert "wheels" not in final


def test_requirements_pin_every_package_with_its_hash(lock):
    lines = render_requirements(lock).splitlines()
    assert len(lines) == len(lock.packages)
    for p, line in zip(lock.packages, lines):
        assert line == f"{p.name}=={p.version} --hash=sha256:{p.sha256}"


def test_build_key_depends_on_profile_and_is_stable(lock):
    assert plan_build(lock).build_key == plan_build(lock).build_key
    assert plan_build(lock, "portable").build_key != plan_build(lock, "native").build_key


def test_cuda_dry_run_cli_renders_without_engine(capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    rc = main(["build", str(LOCKS / "cuda.lock.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("# envkit image for lock cuda")
    assert "def activate" not in out  # copied as files, not inlined


def test_bootstrap_files_go_into_every_image(lock):
    files = plan_build(lock).site_files
    assert "envkit-bootstrap.pth" in files and "envkit_injob/bootstrap.py" in files
    assert "envkit_injob/trace.py" in files and "envkit_injob/portable_ops.py" in files
