"""The project folder is found from any subfolder, and its configuration is strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from envkit.errors import ProjectConfigError
from envkit.project import find_root, load_config
from envkit.settings import store_dir


def test_the_project_is_found_upward_and_its_store_with_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ENVKIT_HOME", raising=False)
    (tmp_path / "proj" / ".envkit").mkdir(parents=True)
    deep = tmp_path / "proj" / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert find_root() == tmp_path / "proj"
    assert store_dir() == tmp_path / "proj" / ".envkit"


def test_a_git_work_tree_bounds_the_search(tmp_path, monkeypatch):
    monkeypatch.delenv("ENVKIT_HOME", raising=False)
    (tmp_path / ".envkit").mkdir()  # a store above the repository must not be taken
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "sub").mkdir()
    assert find_root(repo / "sub") == repo / "sub"
    (repo / "envkit.toml").write_text("seed = 1\n")
    assert find_root(repo / "sub") == repo


def test_pyproject_table_and_envkit_toml(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.envkit]\nlock = "lockfiles/cpu.lock.yaml"\n'
                                              'seed = 42\nmounts = ["./data:/data"]\nenv = {A = "1"}\n')
    cfg = load_config(tmp_path)
    assert cfg.lock == tmp_path / "lockfiles" / "cpu.lock.yaml" and cfg.seed == 42
    assert cfg.mounts == ("./data:/data",) and cfg.env == {"A": "1"} and cfg.source == tmp_path / "pyproject.toml"
    (tmp_path / "envkit.toml").write_text("seed = 1\n")
    with pytest.raises(ProjectConfigError, match="both"):
        load_config(tmp_path)


@pytest.mark.parametrize(("text", "words"), [
    ("seeed = 1\n", "unknown key seeed"),
    ("seed = '42'\n", "seed = '42' is not an integer"),
    ("seed = true\n", "is not an integer"),
    ("mounts = [1]\n", "mounts must be a list of strings"),
    ("lock = 'a'\nimage = 'b'\n", "not both"),
    ("seed = \n", "not valid TOML"),
])
def test_bad_configuration_is_one_clear_error(tmp_path: Path, text: str, words: str):
    (tmp_path / "envkit.toml").write_text(text)
    with pytest.raises(ProjectConfigError, match=words):
        load_config(tmp_path)


def test_no_configuration_is_all_defaults(tmp_path):
    cfg = load_config(tmp_path)
    assert cfg.root == tmp_path and cfg.source is None and cfg.lock is None and cfg.seed is None
