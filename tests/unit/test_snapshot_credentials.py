"""Credential files stay out of snapshots (and so out of code/, work/ and bundles) unless the project asks for them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.run.snapshot import list_project, list_project_files, snapshot
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, Outcome

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

CREDENTIALS = [".env", ".env.local", "config/server.pem", "deploy/id_rsa", "id_ed25519", ".netrc", ".pypirc",
               "credentials.json", "gcp/credentials-prod.json", ".aws/credentials", ".aws/config", ".ssh/config",
               ".ssh/known_hosts", "tls/private.key"]
ORDINARY = ["train.py", "env.py", "environment.yml", ".env.example", "id_mapping.py", "deploy/id_rsa.pub",
            "data/ids.csv", "src/credentials.py", "notes/keys.md", ".envkitignore"]


def make(root: Path, rels: list[str]) -> None:
    for rel in rels:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# no rules\n" if path.name == ".envkitignore" else f"{rel}\n")


def git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


@pytest.fixture(params=["plain", "git"])
def project(request, tmp_path: Path) -> Path:
    root = tmp_path / "p"
    make(root, CREDENTIALS + ORDINARY)
    if request.param == "git":  # tracked: still left out
        git(root, "init", "-q")
        git(root, "add", "-A")
        git(root, "commit", "-qm", "init")
    return root


def test_credential_files_are_left_out_and_listed(project: Path):
    listing = list_project(project)
    assert listing.files == sorted(ORDINARY)
    assert listing.withheld == sorted(CREDENTIALS)
    assert list_project_files(project) == listing.files
    line = listing.warning
    assert line is not None and "\n" not in line
    assert line.startswith("left out of the snapshot as likely credentials: .aws/, .env, .env.local, .netrc")
    assert ".ssh/," in line and ".ssh/config" not in line and "to .envkitignore" in line and "!.aws/" in line


def test_a_negated_pattern_in_envkitignore_takes_one_back(project: Path):
    (project / ".envkitignore").write_text("!.env\n!.ssh/\n")
    listing = list_project(project)
    assert ".env" in listing.files and ".ssh/config" in listing.files and ".ssh/known_hosts" in listing.files
    assert ".env" not in listing.withheld and ".env.local" in listing.withheld


def test_an_ignored_credential_file_is_not_reported(tmp_path: Path):
    make(tmp_path, ["train.py", ".env"])
    (tmp_path / ".gitignore").write_text(".env\n")
    listing = list_project(tmp_path)
    assert listing.withheld == [] and listing.warning is None and ".env" not in listing.files


def test_snapshot_copies_no_credential(project: Path, tmp_path: Path):
    dest = tmp_path / "copy"
    snapshot(project, dest)
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert copied == sorted(ORDINARY)


def test_a_run_keeps_no_credential_in_its_folder(project: Path, tmp_path: Path):
    engine = FakeEngine()
    image = engine.add_image("img", lambda ctx: Outcome(0))
    store = FileStore(tmp_path / "store")
    record = run(engine, store, RunRequest(script="train.py", seed=1, image=image, project=project, trace="off"),
                 sink=Sink(None, None))
    layout = store.layout(record.run_id)
    for folder in (layout.code, layout.work):
        names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert names.isdisjoint(CREDENTIALS)
    assert not {e.path for e in record.code.files} & set(CREDENTIALS)
