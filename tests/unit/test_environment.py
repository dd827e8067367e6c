"""`envkit build` and `envkit run` without a lockfile: the project's environment, found in the documented order, and
one clear line when there is none or more than one."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import ProjectConfigError, ProjectEnvironmentError
from envkit.lock.model import BaseImage, Lockfile, PinnedPackage, Platform, write_lockfile
from envkit.run.environment import find_environment
from envkit.run.runner import RunRequest, run
from envkit.settings import IMAGE_DETERMINISM_ENV
from envkit.store.filestore import FileStore

from .fakes import FakeEngine

SPEC = "name: proj\npython: '3.11'\nbase: envkit/base:bookworm-py3.11\npackages: [six]\n"


def write_lock(path: Path, name: str = "proj", requirements: tuple[str, ...] = ("six",)) -> Path:
    lock = Lockfile(name=name, python="3.11", platform=Platform(os="linux", arch="x86_64", tag="x86_64-manylinux_2_28"),
                    base=BaseImage(ref="envkit/base:bookworm-py3.11", digest="sha256:" + "0" * 64, python="3.11.2"),
                    requirements=requirements, sources={}, environment=dict(IMAGE_DETERMINISM_ENV),
                    packages=(PinnedPackage("six", "1.17.0", "six-1.17.0-py2.py3-none-any.whl",
                                            "https://example.org/six-1.17.0-py2.py3-none-any.whl", "1" * 64),),
                    generated_by="test")
    write_lockfile(lock, path)
    return path


def test_a_spec_alone_is_locked_into_lockfiles(tmp_path):
    (tmp_path / "envkit.yaml").write_text(SPEC)
    (tmp_path / "src").mkdir()
    env = find_environment(tmp_path / "src")  # from a subfolder too
    assert env.root == tmp_path and env.needs_lock
    assert env.spec == tmp_path / "envkit.yaml" and env.lock == tmp_path / "lockfiles" / "proj.lock.yaml"
    assert not (tmp_path / "lockfiles").exists()  # finding writes nothing


def test_the_spec_s_own_lock_once_made_is_used_as_it_is(tmp_path):
    (tmp_path / "envkit.yaml").write_text(SPEC)
    lock = write_lock(tmp_path / "lockfiles" / "proj.lock.yaml")
    env = find_environment(tmp_path)
    assert (env.lock, env.spec, env.notes) == (lock, None, [])
    (tmp_path / "envkit.yaml").write_text(SPEC.replace("[six]", "[six, attrs]"))
    env = find_environment(tmp_path)
    assert env.lock == lock and not env.needs_lock
    assert env.notes == ["envkit.yaml changed since lockfiles/proj.lock.yaml was made (packages); the lock is used as "
                         "it is: run `envkit lock envkit.yaml` to lock it again"]


def test_the_one_lock_under_lockfiles(tmp_path):
    lock = write_lock(tmp_path / "lockfiles" / "cpu.lock.yaml", name="cpu")
    env = find_environment(tmp_path)
    assert env.lock == lock and env.source == "the one lock in lockfiles/"


def test_the_configured_lock_comes_first(tmp_path):
    write_lock(tmp_path / "lockfiles" / "a.lock.yaml", name="a")
    chosen = write_lock(tmp_path / "lockfiles" / "b.lock.yaml", name="b")
    (tmp_path / "envkit.yaml").write_text(SPEC)
    (tmp_path / "envkit.toml").write_text('lock = "lockfiles/b.lock.yaml"\n')
    assert find_environment(tmp_path).lock == chosen
    (tmp_path / "envkit.toml").write_text('lock = "lockfiles/proj.lock.yaml"\n')  # the spec's lock, not made yet
    env = find_environment(tmp_path)
    assert env.needs_lock and env.lock == tmp_path / "lockfiles" / "proj.lock.yaml"
    (tmp_path / "envkit.toml").write_text('lock = "lockfiles/gone.lock.yaml"\n')
    with pytest.raises(ProjectEnvironmentError, match="envkit.toml names lock lockfiles/gone.lock.yaml, which does "
                                                      "not exist"):
        find_environment(tmp_path)


def test_a_configured_image_is_for_runs_not_builds(tmp_path):
    (tmp_path / "envkit.toml").write_text('image = "127.0.0.1:5000/x@sha256:' + "a" * 64 + '"\n')
    assert find_environment(tmp_path).image.startswith("127.0.0.1:5000/x@")
    with pytest.raises(ProjectEnvironmentError, match="names image .*nothing to build"):
        find_environment(tmp_path, images=False)


def test_more_than_one_candidate_is_one_line_naming_them(tmp_path):
    write_lock(tmp_path / "lockfiles" / "cpu.lock.yaml", name="cpu")
    (tmp_path / "envkit.yaml").write_text(SPEC)  # its lock would be a second one
    with pytest.raises(ProjectEnvironmentError) as err:
        find_environment(tmp_path)
    assert err.value.message == (f"more than one environment in {tmp_path}: lockfiles/cpu.lock.yaml, "
                                 "lockfiles/proj.lock.yaml (from envkit.yaml, not made yet)")
    assert err.value.exit_code == 18 and "envkit build LOCKFILE" in err.value.hint


def test_none_is_one_line_with_a_hint(tmp_path, monkeypatch, capsys):
    with pytest.raises(ProjectEnvironmentError, match="no environment in .*no lock in its configuration, no "
                                                      r"lockfiles/\*\.lock\.yaml, no envkit\.yaml"):
        find_environment(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ENVKIT_HOME", raising=False)
    assert main(["build"]) == 18
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("error: no environment in") and err[1].startswith("hint: write an")
    (tmp_path / "x.py").write_text("print(1)\n")
    with pytest.raises(ProjectEnvironmentError, match="no environment in"):  # envkit run resolves the same way
        run(FakeEngine(), FileStore(tmp_path / "store"), RunRequest(script="x.py", seed=1, project=tmp_path))


def test_a_malformed_configuration_or_spec_is_its_own_error(tmp_path):
    (tmp_path / "envkit.toml").write_text("lock = 3\n")
    with pytest.raises(ProjectConfigError):
        find_environment(tmp_path)
    (tmp_path / "envkit.toml").unlink()
    (tmp_path / "envkit.yaml").write_text("name: proj\n")
    from envkit.errors import SpecError

    with pytest.raises(SpecError):
        find_environment(tmp_path)
