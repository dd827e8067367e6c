"""MLflow export against a real tracking server (`mlflow server`, SQLite backend, artifacts served over HTTP).

Everything is read back through MLflow's own mlflow_client. The tests at the end run `envkit run --mlflow` and `envkit
replay` on the real Docker engine (marked docker); the others make runs with the real RunRecord and FileStore in a
temporary store, with real files in their run folders. Skipped with the reason when MLflow's server is not installed
(`pip install mlflow`; .ci/setup.d/30-mlflow.sh does).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from envkit.errors import TrackerError
from envkit.fingerprint import host_fingerprint
from envkit.manifest import ManifestEntry, manifest
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, Fingerprint, ImageInfo, LockInfo, RunRecord

from .conftest import envkit

SERVER_START_S = 240  # a cold start runs the database migrations; 40 s on a busy 2-core machine


def _server_reason() -> str | None:
    for module in ("mlflow", "sqlalchemy", "alembic"):
        if importlib.util.find_spec(module) is None:
            return f"MLflow's tracking server is not installed ({module} missing): pip install mlflow"
    return None


# slow: the server's start alone takes 20-40 s on a 2-core machine (its database migrations).
pytestmark = [pytest.mark.skipif(_server_reason() is not None, reason=_server_reason() or ""), pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real MLflow tracking server on 127.0.0.1, for the session; its log is shown if it does not come up."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "wb")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: uvicorn and its worker
        try:
            proc.wait(timeout=10)  # uvicorn's graceful stop waits for idle keep-alive connections
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture()
def mlflow_client(tracking_uri: str) -> Any:
    """MLflow's own client (``client`` is the Docker client in conftest)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def make_run(store: FileStore, seed: int = 42, metrics: dict[str, Any] | None = None, **fields: Any) -> RunRecord:
    """A finished run with real files: metrics.json, a model and a large file in output/, a CSV in work/, logs,
    lock.yaml; outputs hashed with envkit's own manifest."""
    run_id = store.create_run()
    d = store.run_dir(run_id)
    (d / "output").mkdir()
    (d / "work" / "results").mkdir(parents=True)
    metrics = {"loss": 0.125 + seed / 1000, "accuracy": 0.93, "epochs": 3, "model": "mlp", "converged": True} \
        if metrics is None else metrics
    (d / "output" / "metrics.json").write_text(json.dumps(metrics))
    (d / "output" / "model.bin").write_bytes(hashlib.sha256(str(seed).encode()).digest() * 64)  # 2 KiB
    (d / "output" / "big.bin").write_bytes(b"\0" * 20_000)
    (d / "work" / "results" / "preds.csv").write_text("id,pred\n0,1\n1,0\n")
    (d / "lock.yaml").write_text("schema_version: 1\nname: cpu\n")
    (d / "stdout.log").write_text(f"seed {seed}\nepoch 1 loss 0.5\n")
    (d / "stderr.log").write_text("")
    outputs = [ManifestEntry("$ENVKIT_OUTPUT_DIR/" + e.path, e.size, e.sha256) for e in manifest(d / "output").entries]
    outputs += manifest(d / "work").entries
    fp = host_fingerprint()
    values: dict[str, Any] = dict(
        run_id=run_id, status="succeeded", started="2026-11-30T10:00:00.250Z", finished="2026-11-30T10:01:05.750Z",
        command=["envkit", "run", "--seed", str(seed), "train.py", "--epochs", "3"], script="train.py",
        args=["--epochs", "3", "--name", "two words"], seed=seed, exit_code=0, outputs=outputs,
        image=ImageInfo(id="sha256:" + "a1" * 32, digest="localhost:5000/envkit/cpu@sha256:" + "b2" * 32),
        lock=LockInfo(path="lockfiles/cpu.lock.yaml", sha256="c3" * 32, name="cpu"),
        code=CodeInfo(sha256="d4" * 32, git_commit="e5" * 20, git_dirty=False),
        fingerprint=Fingerprint(schema_version=fp["schema_version"], host=fp["host"], gpus=fp["gpus"]))
    values.update(fields)
    record = RunRecord(**values)
    store.write(record)
    return record


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def artifacts(mlflow_client: Any, run_id: str, path: str | None = None) -> dict[str, int]:
    found: dict[str, int] = {}
    for info in mlflow_client.list_artifacts(run_id, path):
        if info.is_dir:
            found.update(artifacts(mlflow_client, run_id, info.path))
        else:
            found[info.path] = info.file_size
    return found


def runs_tagged(mlflow_client: Any, tag: str, value: str) -> list[Any]:
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in mlflow_client.search_experiments(view_type=ViewType.ALL)]
    return mlflow_client.search_runs(exps, filter_string=f"tags.`{tag}` = '{value}'", run_view_type=ViewType.ALL)


# --- one run -----------------------------------------------------------------------------------------------------
def test_export_holds_params_tags_metrics_and_artifacts(store: FileStore, mlflow_client: Any, tracking_uri: str,
                                                        tmp_path: Path) -> None:
    from envkit.tracking.mlflow import export_run

    record = make_run(store)
    run_dir = store.run_dir(record.run_id)
    result = export_run(record, run_dir, tracking_uri, experiment="envkit-it-one", artifact_limit_bytes=10_000)
    assert result.created
    assert result.url == f"{tracking_uri}/#/experiments/{result.experiment_id}/runs/{result.mlflow_run_id}"
    run = mlflow_client.get_run(result.mlflow_run_id)
    assert mlflow_client.get_experiment(run.info.experiment_id).name == "envkit-it-one"

    assert run.data.params == {"seed": "42", "determinism": "strict", "threads": "1", "cpu_profile": "native",
                               "script": "train.py", "args": "--epochs 3 --name 'two words'"}
    tags = run.data.tags
    assert tags["envkit.run_id"] == record.run_id
    assert tags["envkit.image_id"] == "sha256:" + "a1" * 32
    assert tags["envkit.image_digest"] == "localhost:5000/envkit/cpu@sha256:" + "b2" * 32
    assert tags["envkit.lock_sha256"] == "c3" * 32
    assert tags["envkit.code_sha256"] == "d4" * 32
    assert tags["mlflow.source.git.commit"] == "e5" * 20
    assert tags["envkit.host.cpu_model"] == record.fingerprint.host["cpu_model"]
    if record.fingerprint.gpus.get("available"):
        assert tags["envkit.gpu.names"] and tags["envkit.gpu.driver"] == record.fingerprint.gpus["driver_version"]
    else:
        assert tags["envkit.gpu.names"] == "none"
    assert run.info.run_name == record.run_id

    # Numbers from metrics.json; the string and the boolean are left out, with a note.
    assert run.data.metrics == {"loss": 0.167, "accuracy": 0.93, "epochs": 3.0}
    assert any("not numbers: model, converged" in n for n in result.notes)

    assert run.info.status == "FINISHED"
    assert run.info.start_time == 1796032800250  # 2026-11-30T10:00:00.250Z
    assert run.info.end_time == 1796032865750

    files = artifacts(mlflow_client, result.mlflow_run_id)
    assert set(files) == {"record.json", "lock.yaml", "fingerprint.json", "stdout.log", "stderr.log",
                          "output/metrics.json", "output/model.bin", "work/results/preds.csv"}
    assert files["output/model.bin"] == 2048
    assert any("big.bin" in n and "artifact limit" in n for n in result.notes)  # 20,000 bytes > the 10,000 limit
    got = Path(mlflow_client.download_artifacts(result.mlflow_run_id, "record.json", str(tmp_path)))
    assert got.read_bytes() == (run_dir / "record.json").read_bytes()
    fingerprint = json.loads(Path(mlflow_client.download_artifacts(result.mlflow_run_id, "fingerprint.json",
                                                            str(tmp_path))).read_text())
    assert fingerprint["host"]["cpu_model"] == record.fingerprint.host["cpu_model"]


def test_second_export_changes_nothing(store: FileStore, mlflow_client: Any, tracking_uri: str) -> None:
    from envkit.tracking.mlflow import export_run

    record = make_run(store, metrics={"loss": 0.167, "grad_norm": float("nan")})  # a diverged job reports NaN
    first = export_run(record, store.run_dir(record.run_id), tracking_uri, experiment="envkit-it-twice")
    before = mlflow_client.get_run(first.mlflow_run_id)
    listing = artifacts(mlflow_client, first.mlflow_run_id)
    second = export_run(record, store.run_dir(record.run_id), tracking_uri, experiment="envkit-it-twice")
    assert (second.mlflow_run_id, second.created) == (first.mlflow_run_id, False)
    assert len(runs_tagged(mlflow_client, "envkit.run_id", record.run_id)) == 1
    after = mlflow_client.get_run(first.mlflow_run_id)
    assert (after.data.params, after.data.tags) == (before.data.params, before.data.tags)
    assert after.data.metrics["loss"] == before.data.metrics["loss"] == 0.167
    assert (after.info.status, after.info.end_time) == (before.info.status, before.info.end_time)
    assert [m.value for m in mlflow_client.get_metric_history(first.mlflow_run_id, "loss")] == [0.167]  # logged once
    assert len(mlflow_client.get_metric_history(first.mlflow_run_id, "grad_norm")) == 1
    assert artifacts(mlflow_client, first.mlflow_run_id) == listing


def test_a_running_run_is_updated_when_it_ends(store: FileStore, mlflow_client: Any, tracking_uri: str,
                                               tmp_path: Path) -> None:
    from envkit.tracking.mlflow import export_run

    record = make_run(store, status="running", finished=None, exit_code=None)
    first = export_run(record, store.run_dir(record.run_id), tracking_uri, experiment="envkit-it-status")
    assert mlflow_client.get_run(first.mlflow_run_id).info.status == "RUNNING"
    record.status, record.finished, record.exit_code = "oom", "2026-11-30T10:02:00.000Z", 137
    store.write(record)
    second = export_run(record, store.run_dir(record.run_id), tracking_uri, experiment="envkit-it-status")
    run = mlflow_client.get_run(second.mlflow_run_id)
    assert second.mlflow_run_id == first.mlflow_run_id
    assert (run.info.status, run.info.end_time) == ("FAILED", 1796032920000)
    assert (run.data.tags["envkit.status"], run.data.tags["envkit.exit_code"]) == ("oom", "137")
    got = Path(mlflow_client.download_artifacts(run.info.run_id, "record.json", str(tmp_path)))
    assert json.loads(got.read_text())["status"] == "oom"  # the record as it is now, not as first exported


def test_hostile_outputs_are_left_out_with_a_note(store: FileStore, mlflow_client: Any, tracking_uri: str,
                                                  tmp_path: Path) -> None:
    from envkit.tracking.mlflow import export_run

    secret = tmp_path / "secret.txt"
    secret.write_text("not for the tracker")
    record = make_run(store)
    d = store.run_dir(record.run_id)
    (d / "work" / "leak").symlink_to(secret)
    (d / "output" / "model.bin").write_bytes(b"changed after the run")
    record.outputs += [ManifestEntry("../../secret.txt", 19, "0" * 64), ManifestEntry("leak", 19, "0" * 64),
                       ManifestEntry("$ENVKIT_OUTPUT_DIR/gone.bin", 3, "0" * 64)]
    store.write(record)
    result = export_run(record, d, tracking_uri, experiment="envkit-it-hostile")
    files = artifacts(mlflow_client, result.mlflow_run_id)
    assert not {"output/model.bin", "work/leak", "output/gone.bin"} & set(files)
    assert not any("secret" in f for f in files)
    notes = "\n".join(result.notes)
    assert "../../secret.txt left out: not a plain relative path" in notes
    assert "leak left out: not a regular file inside the run folder" in notes
    assert "model.bin left out: changed since the run" in notes
    assert "gone.bin left out: missing" in notes


# --- replays and sweeps ------------------------------------------------------------------------------------------
def test_replay_verdicts_land_on_the_original(store: FileStore, mlflow_client: Any, tracking_uri: str) -> None:
    from envkit.tracking.mlflow import export_replay_verdict

    original = make_run(store)
    same = make_run(store, replay_of=original.run_id, verdict={"kind": "IDENTICAL", "files": []})
    other = make_run(store, seed=43, replay_of=original.run_id, verdict={"kind": "DIVERGED", "files": []})
    o_dir = store.run_dir(original.run_id)
    # The original was never exported: the first verdict makes its MLflow run.
    first = export_replay_verdict(original, o_dir, same, store.run_dir(same.run_id), tracking_uri,
                                  experiment="envkit-it-replay")
    assert first.original.created and first.verdict == "IDENTICAL"
    second = export_replay_verdict(original, o_dir, other, store.run_dir(other.run_id), tracking_uri,
                                   experiment="envkit-it-replay")
    assert second.original.mlflow_run_id == first.original.mlflow_run_id and not second.original.created

    tags = mlflow_client.get_run(first.original.mlflow_run_id).data.tags
    assert tags[f"envkit.replay.{same.run_id}"] == "IDENTICAL"
    assert tags[f"envkit.replay.{other.run_id}"] == "DIVERGED"
    for replay, result in ((same, first), (other, second)):
        run = mlflow_client.get_run(result.replay.mlflow_run_id)
        assert run.data.tags["envkit.replay_of"] == original.run_id
        assert run.data.tags["envkit.replay_of.mlflow_run_id"] == first.original.mlflow_run_id
        assert run.data.tags["envkit.run_id"] == replay.run_id
    assert run.data.tags["envkit.verdict"] == "DIVERGED"
    assert len(runs_tagged(mlflow_client, "envkit.run_id", original.run_id)) == 1


def test_sweep_is_a_parent_with_nested_runs(store: FileStore, mlflow_client: Any, tracking_uri: str) -> None:
    from envkit.tracking.mlflow import export_sweep

    runs = [make_run(store, seed=s) for s in (1, 2, 3)]
    stats = {"loss": {"n": 3, "mean": 0.127, "std": 0.001, "min": 0.126, "max": 0.128, "ci95_low": 0.1245,
                      "ci95_high": 0.1295}}
    pairs = [(r, store.run_dir(r.run_id)) for r in runs]
    result = export_sweep("sweep-20261130-a1", pairs, stats, tracking_uri, experiment="envkit-it-sweep")
    again = export_sweep("sweep-20261130-a1", pairs, stats, tracking_uri, experiment="envkit-it-sweep")
    assert again.parent.mlflow_run_id == result.parent.mlflow_run_id and not again.parent.created
    assert [r.mlflow_run_id for r in again.runs] == [r.mlflow_run_id for r in result.runs]

    parents = runs_tagged(mlflow_client, "envkit.sweep_id", "sweep-20261130-a1")
    assert [p.info.run_id for p in parents] == [result.parent.mlflow_run_id]
    parent = parents[0]
    assert parent.data.metrics == {"loss.n": 3.0, "loss.mean": 0.127, "loss.std": 0.001, "loss.min": 0.126,
                                   "loss.max": 0.128, "loss.ci95_low": 0.1245, "loss.ci95_high": 0.1295}
    assert parent.data.params["seeds"] == "1,2,3" and parent.data.params["script"] == "train.py"
    assert parent.info.status == "FINISHED"
    children = runs_tagged(mlflow_client, "mlflow.parentRunId", result.parent.mlflow_run_id)
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3"]
    assert {c.data.tags["envkit.run_id"] for c in children} == {r.run_id for r in runs}


def test_sweep_as_the_command_exports_it(store: FileStore, mlflow_client: Any, tracking_uri: str) -> None:
    """What `envkit mlflow export SWEEP_ID` does with load_sweep's answer: its statistics as the sweep report gives
    them (a statistic that does not exist is None), sweep ids in the run id format."""
    from envkit.cli.mlflow import sweep_rows
    from envkit.tracking.config import Tracking

    runs = [make_run(store, seed=s, metrics={"loss": 0.5, "acc": 0.25 * s}) for s in (4, 5)]
    sweep_id = store.create_run()  # sweep ids come from the same generator as run ids
    stats = {"loss": {"n": 2, "mean": 0.5, "std": 0.0, "min": 0.5, "max": 0.5, "ci95_low": 0.5, "ci95_high": 0.5},
             "acc": {"n": 1, "mean": 1.0, "std": None, "min": 1.0, "max": 1.0, "ci95_low": None, "ci95_high": None}}
    data = sweep_rows(sweep_id, [(r, store.run_dir(r.run_id)) for r in runs], stats,
                      Tracking(tracking_uri, "envkit-it-sweep-cli"))
    assert data["parent"]["sweep_id"] == sweep_id and data["parent"]["created"]
    assert [row["run_id"] for row in data["runs"]] == [r.run_id for r in runs]
    parent = mlflow_client.get_run(data["parent"]["mlflow_run_id"])
    assert parent.data.metrics == {"loss.n": 2.0, "loss.mean": 0.5, "loss.std": 0.0, "loss.min": 0.5, "loss.max": 0.5,
                                   "loss.ci95_low": 0.5, "loss.ci95_high": 0.5, "acc.n": 1.0, "acc.mean": 1.0,
                                   "acc.min": 1.0, "acc.max": 1.0}
    assert data["parent"]["notes"] == []  # statistics that do not exist are no news
    for row in data["runs"]:
        assert mlflow_client.get_run(row["mlflow_run_id"]).data.tags["mlflow.parentRunId"] == parent.info.run_id


# --- tracker trouble ---------------------------------------------------------------------------------------------
def test_unreachable_tracker_is_one_error_and_leaves_the_run_intact(store: FileStore) -> None:
    from envkit.tracking.mlflow import export_run

    record = make_run(store)
    before = tree(store.root)
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(TrackerError) as info:
        export_run(record, store.run_dir(record.run_id), uri, experiment="envkit-it-down")
    err = info.value
    assert err.message == f"cannot reach the MLflow tracker at {uri}: connection refused"
    assert f"envkit mlflow export {record.run_id}" in (err.hint or "")
    assert err.exit_code == 60
    assert tree(store.root) == before


def test_wrong_path_and_deleted_experiment(store: FileStore, mlflow_client: Any, tracking_uri: str) -> None:
    from envkit.tracking.mlflow import export_run

    record = make_run(store)
    with pytest.raises(TrackerError, match=r"has no MLflow API there .*\(HTTP 404\)"):
        export_run(record, store.run_dir(record.run_id), tracking_uri + "/not-mlflow", experiment="x")
    exp = mlflow_client.create_experiment("envkit-it-deleted")
    mlflow_client.delete_experiment(exp)
    with pytest.raises(TrackerError, match="experiment 'envkit-it-deleted' is deleted") as info:
        export_run(record, store.run_dir(record.run_id), tracking_uri, experiment="envkit-it-deleted")
    assert f"--experiment-id {exp}" in (info.value.hint or "")


def test_tracking_uri_and_experiment_defaults(store: FileStore, mlflow_client: Any, tracking_uri: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from envkit.tracking.mlflow import export_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    project = tmp_path / "envkit-it-project"
    project.mkdir()
    monkeypatch.chdir(project)
    record = make_run(store)
    result = export_run(record, store.run_dir(record.run_id))
    assert mlflow_client.get_experiment(result.experiment_id).name == "envkit-it-project"


# --- the command -------------------------------------------------------------------------------------------------
def test_cli_export_json_and_replay(store: FileStore, mlflow_client: Any, tracking_uri: str, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from envkit.cli.mlflow import mlflow_app

    original = make_run(store)
    replay = make_run(store, replay_of=original.run_id, verdict={"kind": "IDENTICAL", "files": []})
    project = tmp_path / "envkit-it-cli"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("ENVKIT_HOME", str(store.root))
    runner = CliRunner()
    r = runner.invoke(mlflow_app, ["export", original.run_id, "--tracking-uri", tracking_uri, "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["run_id"] == original.run_id and data["created"]
    assert mlflow_client.get_experiment(data["experiment_id"]).name == "envkit-it-cli"

    r = runner.invoke(mlflow_app, ["export", replay.run_id, "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    assert f"{original.run_id}: MLflow run {data['mlflow_run_id']} (updated) {data['url']}" in r.stdout
    assert f"{replay.run_id}: MLflow run " in r.stdout and "(created)" in r.stdout
    assert "verdict IDENTICAL on the original's MLflow run" in r.stdout
    assert mlflow_client.get_run(data["mlflow_run_id"]).data.tags[f"envkit.replay.{replay.run_id}"] == "IDENTICAL"

    r = runner.invoke(mlflow_app, ["export", original.run_id, "--tracking-uri", tracking_uri,
                                   "--artifact-limit", "lots"])
    assert r.exit_code == 2 and "'lots' is not a size" in r.output


def test_export_after_run_warns_once_and_goes_on(store: FileStore, capsys: pytest.CaptureFixture[str]) -> None:
    from envkit.cli.mlflow import export_after_run
    from envkit.tracking.config import Tracking

    record = make_run(store)
    before = tree(store.root)
    assert export_after_run(store, record, Tracking(f"http://127.0.0.1:{free_port()}", "x")) is None
    err = capsys.readouterr().err
    assert err.count("warning: the MLflow export failed") == 1 and err.count("\n") == 1
    assert f"envkit mlflow export {record.run_id}" in err
    assert tree(store.root) == before


# --- envkit run --mlflow and envkit replay, on the real engine ------------------------------------------------------
JOB = (
    "import json, os, random, sys\n"
    "loss = random.random()\n"
    "with open(os.path.join(os.environ['ENVKIT_OUTPUT_DIR'], 'metrics.json'), 'w') as f:\n"
    "    json.dump({'loss': loss, 'epochs': 2}, f)\n"
    "open('draws.txt', 'w').write(repr(loss))\n"
    "print('loss', loss)\n"
    "sys.exit(int(os.environ.get('EXIT', '0')))\n"
)


def job_project(root: Path, name: str) -> Path:
    project = root / name
    project.mkdir()
    (project / "train.py").write_text(JOB)
    return project


@pytest.mark.docker
def test_run_with_mlflow_then_replay_on_the_real_engine(tmp_path: Path, tiny_lock: Path, tiny_image: str,
                                                        tracking_uri: str, mlflow_client: Any) -> None:
    project = job_project(tmp_path, "envkit-it-e2e")
    (project / "envkit.toml").write_text(f'mlflow = "{tracking_uri}"\n')  # `--mlflow` alone takes it from here
    r = envkit("run", "--seed", "5", "--lock", str(tiny_lock), "--mlflow", "--json", "train.py", "--epochs", "2",
               cwd=project)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    run_id, exported = out["run_id"], out["mlflow"]
    record = json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())
    run = mlflow_client.get_run(exported["mlflow_run_id"])
    assert mlflow_client.get_experiment(run.info.experiment_id).name == "envkit-it-e2e"
    assert run.data.params == {"seed": "5", "determinism": "strict", "threads": "1", "cpu_profile": "native",
                               "script": "train.py", "args": "--epochs 2"}
    tags = run.data.tags
    assert tags["envkit.run_id"] == run_id and tags["envkit.status"] == "succeeded"
    assert tags["envkit.image_id"] == record["image"]["id"]
    assert tags["envkit.lock_sha256"] == record["lock"]["sha256"]
    assert tags["envkit.code_sha256"] == record["code"]["sha256"]
    assert tags["envkit.host.cpu_model"] == record["fingerprint"]["host"]["cpu_model"]
    metrics = json.loads((project / ".envkit" / "runs" / run_id / "output" / "metrics.json").read_text())
    assert run.data.metrics == {"loss": metrics["loss"], "epochs": 2.0}
    assert run.info.status == "FINISHED"
    assert {"record.json", "lock.yaml", "fingerprint.json", "stdout.log", "output/metrics.json",
            "work/draws.txt"} <= set(artifacts(mlflow_client, run.info.run_id))

    # The project's setting makes the replay export too: its verdict lands on the original's MLflow run.
    r = envkit("replay", run_id, "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    replay = json.loads(r.stdout)
    assert replay["verdict"]["kind"] == "IDENTICAL"
    assert replay["mlflow"]["original"]["mlflow_run_id"] == run.info.run_id
    assert mlflow_client.get_run(run.info.run_id).data.tags[f"envkit.replay.{replay['run_id']}"] == "IDENTICAL"
    own = mlflow_client.get_run(replay["mlflow"]["replay"]["mlflow_run_id"])
    assert own.data.tags["envkit.replay_of"] == run_id and own.data.tags["envkit.verdict"] == "IDENTICAL"
    assert own.data.tags["envkit.replay_of.mlflow_run_id"] == run.info.run_id

    # Exporting again afterwards finds the same MLflow run and changes nothing.
    before = mlflow_client.get_run(run.info.run_id)
    r = envkit("mlflow", "export", run_id, "--json", cwd=project)
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert (again["mlflow_run_id"], again["created"]) == (run.info.run_id, False)
    after = mlflow_client.get_run(run.info.run_id)
    assert (after.data.params, after.data.tags, after.data.metrics) == \
        (before.data.params, before.data.tags, before.data.metrics)
    assert len(runs_tagged(mlflow_client, "envkit.run_id", run_id)) == 1


@pytest.mark.docker
@pytest.mark.parametrize("exit_code", [0, 3])
def test_an_unreachable_tracker_leaves_the_run_intact(tmp_path: Path, tiny_image: str, exit_code: int) -> None:
    project = job_project(tmp_path, "envkit-it-down")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    r = envkit("run", "--seed", "5", "--image", tiny_image, "--env", f"EXIT={exit_code}", "--mlflow", uri,
               "train.py", cwd=project)
    assert r.returncode == exit_code, r.stderr  # the job's exit code, whatever the tracker did
    run_id = r.stdout.strip().splitlines()[-1]
    warnings = [line for line in r.stderr.splitlines() if "MLflow" in line]
    assert warnings == [(f"warning: the MLflow export failed (cannot reach the MLflow tracker at {uri}: connection "
                         f"refused); the run is recorded; retry with `envkit mlflow export {run_id}`")]
    record = json.loads((project / ".envkit" / "runs" / run_id / "record.json").read_text())
    assert (record["status"], record["exit_code"]) == ("succeeded" if exit_code == 0 else "failed", exit_code)
    assert [o["path"] for o in record["outputs"]] == ["$ENVKIT_OUTPUT_DIR/metrics.json", "draws.txt"]
