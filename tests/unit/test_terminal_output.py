"""A record from someone else cannot drive the terminal: `envkit runs`, `envkit show` and error lines print its
control characters escaped, never raw."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.manifest import ManifestEntry
from envkit.store.filestore import FileStore
from envkit.store.record import ImageInfo, LockInfo, RunRecord

# Clear screen, set the window title, a bell, a C1 CSI, a right-to-left override, a newline.
NASTY = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202eevil\nline2"
RAW = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # all but the lines' own newlines


@pytest.fixture()
def store(tmp_path: Path, monkeypatch) -> FileStore:
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    return FileStore(tmp_path / "store")


def nasty_record(store: FileStore) -> RunRecord:
    record = RunRecord(
        run_id=store.create_run(), status="succeeded", script=f"train{NASTY}.py", args=[NASTY],
        command=["envkit", "run", NASTY], seed=1, notes=[NASTY], image=ImageInfo(id="sha256:" + "a" * 64, ref=NASTY),
        lock=LockInfo(path=NASTY, sha256="b" * 64), outputs=[ManifestEntry(f"out{NASTY}.bin", 3, "c" * 64)])
    record.fingerprint.host = {"cpu_model": NASTY, "hostname": NASTY}
    store.write(record)
    return record


def test_show_escapes_control_characters(store: FileStore, capsys):
    record = nasty_record(store)
    assert main(["show", record.run_id]) == 0
    out, err = capsys.readouterr()
    assert not RAW.search(out) and not RAW.search(err)
    assert "\\x1b[2J" in out and "\\n" in out  # still readable, escaped
    for line in out.splitlines():  # a value never starts a line of its own
        assert line.startswith(("run ", "  "))


def test_runs_escapes_control_characters(store: FileStore, capsys):
    nasty_record(store)
    assert main(["runs"]) == 0
    out, err = capsys.readouterr()
    assert not RAW.search(out) and not RAW.search(err)
    assert len(out.splitlines()) == 2  # the header and one run


def test_an_error_line_escapes_control_characters(tmp_path: Path, capsys):
    missing = tmp_path / f"lock{NASTY}.yaml"
    assert main(["build", str(missing), "--dry-run"]) != 0
    _, err = capsys.readouterr()
    assert not RAW.search(err) and "\\x1b[2J" in err
