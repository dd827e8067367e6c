"""`envkit pull` / `envkit replay` arguments and the transfer progress, without a registry (the registry itself is in
tests/integration/test_registry_runs.py and test_mission.py)."""

from __future__ import annotations

import threading

import pytest

from envkit.cli import main
from envkit.cli._progress import transfer_bar
from envkit.errors import InvalidRunIdError, RegistryError
from envkit.remote import fetch, is_reference
from envkit.store.filestore import FileStore

RUN = "20261130T215727430Z-484e51ba"
REF = "127.0.0.1:5000/team/runs@sha256:" + "a" * 64


def test_a_reference_has_a_registry_part_and_a_run_id_has_none():
    assert is_reference(REF) and is_reference("127.0.0.1:5000/team/runs")
    assert not is_reference(RUN) and not is_reference("latest")


@pytest.mark.parametrize("source, repo, words", [
    (RUN, None, "is a run id: which registry holds it"),
    (REF, "127.0.0.1:5000/x", "already a registry reference; --from goes with a run id"),
    ("127.0.0.1:5000/team/runs:latest", None, "REGISTRY/REPO@sha256"),
    ("127.0.0.1:5000/team/runs", None, "REGISTRY/REPO@sha256"),
])
def test_what_to_fetch_is_checked_before_any_request(tmp_path, source, repo, words):
    with pytest.raises(RegistryError, match=words) as err:
        fetch(FileStore(tmp_path / "store"), source, registry_repo=repo)
    assert "\n" not in err.value.message and err.value.hint
    assert not (tmp_path / "store").exists()  # nothing written


def test_a_malformed_run_id_is_refused_before_the_registry(tmp_path):
    with pytest.raises(InvalidRunIdError):
        fetch(FileStore(tmp_path), "../../etc", registry_repo="127.0.0.1:5000/x")


def test_the_cli_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    assert main(["pull", RUN]) == RegistryError.exit_code
    assert main(["replay", "127.0.0.1:5000/team/runs:latest"]) == RegistryError.exit_code
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["error", "hint", "error", "hint"]


def test_the_transfer_bar_appears_only_after_its_delay_and_takes_several_threads(capsys):
    with transfer_bar("run", enabled=True, delay=60) as advance:  # a quick transfer prints nothing
        advance(10, 100)
    assert capsys.readouterr().err == ""
    with transfer_bar("run", enabled=True, delay=0) as advance:
        threads = [threading.Thread(target=advance, args=(25, 100)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with pytest.raises(KeyError), transfer_bar("image", enabled=True, delay=0, count_bytes=False):
        raise KeyError("a failed transfer stops its bar and lets the error through")
