"""What a run becomes in a tracker (pure: no tracker), and the MLflow module's edges that need no server."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from envkit.errors import TrackerError
from envkit.manifest import ManifestEntry
from envkit.store.filestore import FileStore
from envkit.store.record import Fingerprint, RunRecord
from envkit.sizes import parse_size
from envkit.tracking.content import (
    artifact_files,
    checked_file,
    epoch_ms,
    metric_name_ok,
    metrics_entry,
    numbers,
    params,
    read_metrics,
    replay_verdict,
    sweep_content,
    tags,
)

ROOT = Path(__file__).resolve().parents[2]


def record_in(store: FileStore, **fields: object) -> RunRecord:
    record = RunRecord(run_id=store.create_run(), script="train.py", seed=7, **fields)  # type: ignore[arg-type]
    store.write(record)
    return record


@pytest.mark.parametrize(("text", "size"), [("0", 0), ("100", 100), ("512K", 512 << 10), ("64M", 64 << 20),
                                            ("1.5G", 3 << 29), ("2gb", 2 << 30), ("1 MiB", 1 << 20)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1", "1x", "1e9", "1 i", "M"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("name", "ok"), [("loss", True), ("train/loss", True), ("val acc:top-1", True),
                                          ("a.b_c", True), ("", False), ("a/../b", False), ("/abs", False),
                                          ("a//b", False), ("x" * 251, False), ("loss%", False), ("ä", True)])
def test_metric_names_follow_mlflow(name: str, ok: bool) -> None:
    assert metric_name_ok(name) is ok
    if ok and importlib.util.find_spec("mlflow") is not None:
        from mlflow.utils.validation import _validate_metric_name  # the rule copied: MLflow takes what we take

        _validate_metric_name(name)


def test_numbers_leave_out_what_mlflow_refuses() -> None:
    metrics, notes = numbers({"a": 1, "b": 2.5, "c": "x", "d": True, "e": None, "f/../g": 1, "h": [1]}, "m.json")
    assert metrics == {"a": 1.0, "b": 2.5}
    assert notes == ["m.json: left out 4 value(s) that are not numbers: c, d, e, h",
                     ("m.json: left out 1 name(s) MLflow refuses (letters, digits, _ - . : / and spaces only, no "
                      "path tricks, at most 250 characters): f/../g")]


def test_params_and_tags_of_a_gpu_run(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    record = record_in(store, args=["--lr", "0.1", "a b"], fingerprint=Fingerprint(
        host={"cpu_model": "AMD EPYC 9654", "cpu_vendor": "AuthenticAMD"},
        gpus={"available": True, "driver_version": "580.65", "devices": [{"name": "NVIDIA H200"},
                                                                        {"name": "NVIDIA H200"}]}))
    assert params(record) == {"seed": "7", "determinism": "strict", "threads": "1", "cpu_profile": "native",
                              "script": "train.py", "args": "--lr 0.1 'a b'"}
    t = tags(record)
    assert (t["envkit.gpu.names"], t["envkit.gpu.driver"]) == ("NVIDIA H200, NVIDIA H200", "580.65")
    assert t["envkit.host.cpu_model"] == "AMD EPYC 9654"
    assert "envkit.image_id" not in t and "mlflow.source.git.commit" not in t  # unknown: absent, not "None"
    assert f"envkit replay {record.run_id}" in t["mlflow.note.content"]


def test_verdicts() -> None:
    base = {"run_id": "20261130T100000000Z-0000abcd", "replay_of": "20261130T090000000Z-0000abcd"}
    assert replay_verdict(RunRecord(**base, status="succeeded", verdict={"kind": "DIVERGED"})) == "DIVERGED"
    assert replay_verdict(RunRecord(**base, status="failed")) == "FAILED"
    assert replay_verdict(RunRecord(**base, status="running")) is None


def test_metrics_json_must_be_the_recorded_file(tmp_path: Path) -> None:
    import hashlib

    store = FileStore(tmp_path)
    data = json.dumps({"loss": 0.5}).encode()
    record = record_in(store, outputs=[ManifestEntry("metrics.json", len(data), hashlib.sha256(data).hexdigest())])
    work = store.run_dir(record.run_id) / "work"
    work.mkdir()
    (work / "metrics.json").write_bytes(data)
    assert read_metrics(record, store.run_dir(record.run_id)) == ({"loss": 0.5}, [])
    (work / "metrics.json").write_bytes(data.replace(b"0.5", b"0.1"))
    metrics, notes = read_metrics(record, store.run_dir(record.run_id))
    assert metrics == {} and notes == ["metrics.json left out: changed since the run (sha256 differs from the record)"]


def test_checked_file_stays_in_the_run_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "output").mkdir(parents=True)
    (tmp_path / "outside").write_text("x")
    (run_dir / "output" / "link").symlink_to(tmp_path / "outside")
    (run_dir / "output" / "dir").mkdir()
    assert checked_file(run_dir, run_dir / "output" / "link")[1] == "not a regular file inside the run folder"
    assert checked_file(run_dir, run_dir / "output" / "dir")[1] == "not a regular file inside the run folder"
    assert checked_file(run_dir, run_dir / "stdout.log")[1] == "missing"


def test_hostile_output_paths_are_left_out_with_a_note(tmp_path: Path) -> None:
    """A crafted record cannot make the export upload a file from outside the run folder."""
    store = FileStore(tmp_path / "store")
    (tmp_path / "secret").write_text("x")
    entries = [ManifestEntry(p, 1, "0" * 64) for p in ("$ENVKIT_OUTPUT_DIR/../../../secret", "/etc/passwd",
                                                       "a/../../secret", "bad\nname", "a\\..\\b")]
    record = record_in(store, outputs=entries)
    files, notes = artifact_files(record, store.run_dir(record.run_id), 1 << 20)
    assert files == []
    assert len(notes) == len(entries), notes
    assert all("not a plain relative path" in n or "control character" in n for n in notes), notes


def test_sweep_content(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    runs = [record_in(store, status=s, started=f"2026-11-30T10:0{i}:00.000Z", finished=f"2026-11-30T10:0{i}:30.000Z")
            for i, s in enumerate(("succeeded", "failed", "succeeded"))]
    runs[1].args = ["--other"]
    content = sweep_content("sw1", runs, {"loss": {"mean": 0.5, "n": 3, "note": "x"}, "bad": 3})
    assert content.params == {"determinism": "strict", "threads": "1", "cpu_profile": "native", "script": "train.py",
                              "seeds": "7,7,7"}  # args differ between runs: not a shared param
    assert content.metrics == {"loss.mean": 0.5, "loss.n": 3.0}
    assert content.status == "FAILED"
    assert (content.start_ms, content.end_ms) == (epoch_ms(runs[0].started), epoch_ms(runs[2].finished))


def test_bad_uris_fail_before_any_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.tracking.mlflow import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(TrackerError, match="no MLflow tracking URI given"):
        resolve_tracking_uri(None)
    for uri in ("htp://127.0.0.1:5000", "sqlite:///mlflow.db", "mlruns", "file:///tmp/mlruns"):
        with pytest.raises(TrackerError, match="is not the URI of an MLflow tracking server"):
            resolve_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5000"


def test_importing_the_exporter_imports_no_mlflow() -> None:
    code = ("import sys, envkit.tracking.mlflow, envkit.cli.mlflow\n"
            "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert out.stdout.strip() == "[]", out.stderr


def test_without_mlflow_one_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None\n"  # as if the extra were not installed
        "from envkit.errors import TrackerError\n"
        "from envkit.tracking.mlflow import export_sweep\n"
        "try:\n"
        "    export_sweep('s1', [], {}, 'http://127.0.0.1:9', experiment='x')\n"
        "except TrackerError as e:\n"
        "    print(e.message); print(e.hint)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         check=False)
    assert "MLflow export needs MLflow's client, which is not installed" in out.stdout, out.stderr
    assert "pip install 'envkit[mlflow]'" in out.stdout


def test_metrics_file_is_found_where_jobs_write_it() -> None:
    def entry(path: str) -> ManifestEntry:
        return ManifestEntry(path, 1, "0" * 64)

    assert metrics_entry([entry("out/metrics.json"), entry("metrics.json")])[0] == entry("metrics.json")
    assert metrics_entry([entry("metrics.json"), entry("$ENVKIT_OUTPUT_DIR/metrics.json")])[0] == \
        entry("$ENVKIT_OUTPUT_DIR/metrics.json")
    assert metrics_entry([entry("out/metrics.json"), entry("a/b/metrics.json")])[0] == entry("out/metrics.json")
    assert metrics_entry([entry("model.pt")]) == (None, "")
    none, note = metrics_entry([entry("a/metrics.json"), entry("$ENVKIT_OUTPUT_DIR/b/metrics.json")])
    assert none is None and "several metrics.json outputs" in note
