"""MLflow export: the cost of envkit's export against plain MLflow client calls, and of an unreachable tracker with
envkit's bounds against MLflow's default retries, in one run.

    python benchmarks/bench_mlflow_export.py [--tracking-uri URI] [--runs 5] [--default-cap 300]

Without --tracking-uri (or MLFLOW_TRACKING_URI) it starts a throwaway `mlflow server` (SQLite, 127.0.0.1). Each run
is a real RunRecord in a temporary FileStore with metrics.json, three outputs and logs.

- export: envkit's `export_run` of a new run (find by tag, create, params, tags, metrics, 8 artifacts, status)
  against the same content logged with plain `MlflowClient` calls (no search, no checks), interleaved run by run;
- export again: envkit's second export of the same run (nothing to change) against the plain calls once more;
- unreachable: a refused port and a port that accepts but never answers, with envkit's bounds, against MLflow's
  defaults (measured in subprocesses, side by side; the silent one stopped at --default-cap seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from envkit.errors import TrackerError
from envkit.fingerprint import host_fingerprint
from envkit.run.snapshot import ManifestEntry, manifest
from envkit.store.filestore import FileStore
from envkit.store.record import Fingerprint, ImageInfo, RunRecord
from envkit.tracking.content import run_content
from envkit.tracking.mlflow import HTTP_BOUNDS, export_run

_PROBE = """
import sys, time
from mlflow.tracking import MlflowClient
t = time.monotonic()
try:
    MlflowClient(sys.argv[1]).get_experiment_by_name("x")
except Exception:
    pass
print(time.monotonic() - t)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2).close()
            return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("mlflow server did not come up")


def make_run(store: FileStore, seed: int) -> RunRecord:
    run_id = store.create_run()
    d = store.run_dir(run_id)
    (d / "output").mkdir()
    (d / "work").mkdir()
    (d / "output" / "metrics.json").write_text(json.dumps({"loss": 0.1 + seed / 100, "accuracy": 0.9}))
    (d / "output" / "model.pt").write_bytes(hashlib.sha256(str(seed).encode()).digest() * 8192)  # 256 KiB
    (d / "work" / "preds.csv").write_text("id,pred\n" + "".join(f"{i},{i % 3}\n" for i in range(2000)))
    (d / "stdout.log").write_text("epoch 1\n" * 100)
    (d / "stderr.log").write_text("")
    outputs = [ManifestEntry("$ENVKIT_OUTPUT_DIR/" + e.path, e.size, e.sha256) for e in manifest(d / "output").entries]
    fp = host_fingerprint()
    record = RunRecord(run_id=run_id, status="succeeded", started="2026-11-30T10:00:00.000Z",
                       finished="2026-11-30T10:01:00.000Z", script="train.py", args=["--epochs", "3"], seed=seed,
                       exit_code=0, outputs=outputs + manifest(d / "work").entries,
                       image=ImageInfo(id="sha256:" + "a" * 64),
                       fingerprint=Fingerprint(schema_version=1, host=fp["host"], gpus=fp["gpus"]))
    store.write(record)
    return record


def plain(client, experiment_id: str, record: RunRecord, run_dir: Path) -> None:
    """What a hand-written script would do with the same content: log it, check nothing."""
    from mlflow.entities import Metric, Param

    c = run_content(record, run_dir)
    run = client.create_run(experiment_id, start_time=c.start_ms, tags=c.tags, run_name=c.name)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(k, v) for k, v in c.params.items()],
                     metrics=[Metric(k, v, c.end_ms, 0) for k, v in c.metrics.items()])
    for f in c.files:
        client.log_artifact(rid, str(f.source), f.folder)
    for path, text in c.texts.items():
        client.log_text(rid, text, path)
    client.set_terminated(rid, c.status, c.end_ms)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--default-cap", type=float, default=300.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="envkit-bench-mlflow-"))
    server = None
    uri = args.tracking_uri
    if not uri:
        server, uri = start_server(tmp / "server")

    # MLflow's defaults against a refused and a silent port, in subprocesses that run while the rest is measured.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # never accepted: connections complete in the backlog, requests get no answer
    refused = f"http://127.0.0.1:{free_port()}"
    quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in HTTP_BOUNDS}
    defaults = {name: subprocess.Popen([sys.executable, "-c", _PROBE, u], stdout=subprocess.PIPE, text=True,
                                       env=env) for name, u in (("refused", refused), ("silent", quiet))}
    started = time.monotonic()

    from mlflow.tracking import MlflowClient  # imported once, outside every timing

    os.environ.update(HTTP_BOUNDS)  # the plain calls get the same retry settings as envkit's
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"bench-{os.getpid()}-{int(time.time())}")
    experiment = client.get_experiment(experiment_id).name
    store = FileStore(tmp / "store")
    first, again, base = [], [], []
    for i in range(args.runs + 1):  # round 0 warms both paths up (connections, MLflow's lazy imports): not counted
        record = make_run(store, i)
        d = store.run_dir(record.run_id)
        steps = [(base, lambda r=record, d=d: plain(client, experiment_id, r, d)),
                 (first, lambda r=record, d=d: export_run(r, d, uri, experiment=experiment))]
        for times, step in steps if i % 2 else steps[::-1]:  # each goes first every other round
            times.append(timed(step))
        again.append(timed(lambda r=record, d=d: export_run(r, d, uri, experiment=experiment)))
    first, again, base = first[1:], again[1:], base[1:]
    for k in HTTP_BOUNDS:
        os.environ.pop(k, None)

    def ours(u: str) -> float:
        t = time.perf_counter()
        try:
            export_run(record, d, u, experiment=experiment)
        except TrackerError:
            pass
        return time.perf_counter() - t

    ours_refused, ours_silent = ours(refused), ours(quiet)
    results = {}
    for name, proc in defaults.items():
        try:
            out, _ = proc.communicate(timeout=max(1.0, args.default_cap - (time.monotonic() - started)))
            results[name] = (float(out.strip()), "")
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            results[name] = (time.monotonic() - started, "> ")
    silent.close()
    if server is not None:
        server.terminate()
        server.wait(timeout=30)

    med = statistics.median
    print(f"MLflow export of one run ({args.runs} runs, median; tracker {uri}):")
    print(f"  plain MlflowClient calls    {med(base):6.2f} s")
    print(f"  envkit export (new run)     {med(first):6.2f} s   x{med(first) / med(base):.2f} of plain")
    print(f"  envkit export again (same)  {med(again):6.2f} s   x{med(again) / med(base):.2f} of plain")
    print("Unreachable tracker (one export):")
    for name, mine in (("refused", ours_refused), ("silent", ours_silent)):
        theirs, more = results[name]
        print(f"  {name:8s} envkit {mine:6.1f} s   MLflow defaults {more}{theirs:6.1f} s   "
              f"{more}{theirs / mine:.0f}x faster")


if __name__ == "__main__":
    main()
