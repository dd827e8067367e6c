"""The build plan, checked as data and as the text `envkit build --dry-run` prints, for both reference locks."""

from pathlib import Path

import pytest

from envkit.cli import main
from envkit.image.render import plan_build, recipe_hash, render_plan, render_requirements
from envkit.lock.model import load_lockfile

LOCKS = Path(__file__).resolve().parents[2] / "lockfiles"


@pytest.fixture(params=["cpu", "cuda"])
def lock(request):
    return load_lockfile(LOCKS / f"{request.param}.lock.yaml")


def test_the_plan_is_offline_hash_pinned_and_deterministic(lock):
    plan = plan_build(lock)
    command = "\n".join(plan.venv_command)
    assert "--no-index" in command and "--require-hashes" in command and "--no-deps" in command
    assert "unchecked-hash" in command  # deterministic bytecode (no mtime in a .pyc)
    assert plan.env["PYTHONHASHSEED"] == "0" and plan.env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert plan.labels["io.envkit.lock.sha256"] == lock.content_sha256
    assert plan.epoch == lock.epoch
    assert plan_build(lock) == plan  # nothing of the moment or the host in it


def test_requirements_pin_every_package_with_its_hash(lock):
    lines = render_requirements(lock).splitlines()
    assert len(lines) == len(lock.packages)
    for p, line in zip(lock.packages, lines):
        assert line == f"{p.name}=={p.version} --hash=sha256:{p.sha256}"


def test_build_key_depends_on_profile_and_is_stable(lock):
    assert plan_build(lock).build_key == plan_build(lock).build_key
    assert plan_build(lock, "portable").build_key != plan_build(lock, "native").build_key


def test_the_recipe_follows_the_in_image_files(lock):
    files = plan_build(lock).site_files
    changed = {**files, "envkit_injob/bootstrap.py": files["envkit_injob/bootstrap.py"] + b"\n# changed\n"}
    assert recipe_hash(lock, changed) != recipe_hash(lock, files) == plan_build(lock).recipe


def test_cuda_dry_run_cli_renders_without_engine(capsys, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    rc = main(["build", str(LOCKS / "cuda.lock.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    cuda = load_lockfile(LOCKS / "cuda.lock.yaml")
    assert rc == 0
    assert out.startswith("# envkit build plan: lock cuda")
    assert f"base:      pulled by digest: {cuda.base.pull_ref}" in out  # the CUDA base by registry digest
    assert "nvidia-cublas" in out and "torch==2.13.0 --hash=sha256:" in out
    assert "def activate" not in out  # in-image files are listed, not inlined


def test_the_cpu_plan_names_its_debian_base_and_expected_id(capsys):
    cpu = load_lockfile(LOCKS / "cpu.lock.yaml")
    text = render_plan(cpu, plan_build(cpu), "native")
    assert f"from {len(cpu.base.debian.debs)} pinned .debs" in text
    assert f"expected:  {cpu.images['native']}" in text


def test_bootstrap_files_go_into_every_image(lock):
    files = plan_build(lock).site_files
    assert "envkit-bootstrap.pth" in files and "envkit_injob/bootstrap.py" in files
    assert "envkit_injob/trace.py" in files and "envkit_injob/portable_ops.py" in files


def test_the_committed_cpu_lock_was_pinned_with_this_envkits_recipe():
    """The lock's expected image IDs hold for the in-image files, version and assembly recipe they were built with:
    when one of those changes, the IDs must be recorded again (the integration tests then check the IDs built)."""
    cpu = load_lockfile(LOCKS / "cpu.lock.yaml")
    if cpu.image_parts is None or cpu.image_parts.recipe != recipe_hash(cpu):
        pytest.fail("lockfiles/cpu.lock.yaml's image IDs were pinned with another envkit recipe (in-image files, "
                    "version or assembly changed): run `envkit build lockfiles/cpu.lock.yaml --pin` and commit "
                    "the lock", pytrace=False)
