"""What `--mlflow` adds to `envkit run`, against the same run without it, interleaved in one run; and what an
unreachable tracker costs, with envkit's bounds against MLflow's default retries.

    python benchmarks/bench_mlflow_export.py [--tracking-uri URI] [--runs 5] [--lock L | --image I] [--default-cap 300]

Without --tracking-uri (or MLFLOW_TRACKING_URI) it starts a throwaway `mlflow server` (SQLite, 127.0.0.1). The job
is a small training stand-in: it writes metrics.json and a 1 MiB model to $ENVKIT_OUTPUT_DIR and prints a few lines.
Every timing is a whole `envkit run` process, as a user starts it, so the MLflow client's import is counted.

- run: `envkit run` against `envkit run --mlflow URI`, taking turns to go first;
- import: `python -c "import mlflow.tracking"` against `python -c pass` (what most of --mlflow's cost is);
- unreachable: `envkit run --mlflow` at a refused port and at a port that accepts but never answers, against the
  same run without --mlflow; and MLflow's client with its own defaults at the same two ports (in subprocesses that
  run meanwhile, the silent one stopped at --default-cap seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envkit.tracking.mlflow import HTTP_BOUNDS  # after the path: the checkout's envkit

JOB = """\
import json, os, random
out = os.environ["ENVKIT_OUTPUT_DIR"]
loss = random.random()
json.dump({"loss": loss, "accuracy": 1 - loss / 2}, open(os.path.join(out, "metrics.json"), "w"))
open(os.path.join(out, "model.bin"), "wb").write(random.randbytes(1 << 20))
for epoch in range(3):
    print("epoch", epoch, "loss", loss)
"""

# MLflow's client with its own retry defaults (envkit's bounds removed from the environment): one call.
PROBE = """
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


def timed(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    took = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stderr[-2000:]}")
    return took


def interleaved(commands: dict[str, list[str]], runs: int, **kw) -> dict[str, list[float]]:
    """Each command ``runs`` times, round by round, the order rotated every round."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(timed(commands[name], **kw))
    return times


def image_of(args: argparse.Namespace) -> str:
    if args.image:
        return args.image
    built = subprocess.run([sys.executable, "-m", "envkit", "build", args.lock, "--json"], capture_output=True,
                           text=True, check=True).stdout
    return json.loads(built)["image_id"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--lock", default=str(ROOT / "lockfiles" / "cpu.lock.yaml"))
    ap.add_argument("--image", help="an image to run in instead of --lock's")
    ap.add_argument("--default-cap", type=float, default=300.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="envkit-bench-mlflow-"))
    server = None
    silent = socket.socket()
    try:
        uri = args.tracking_uri
        if not uri:
            server, uri = start_server(tmp / "server")
        image = image_of(args)
        project = tmp / "bench-project"
        project.mkdir()
        (project / "train.py").write_text(JOB)
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ENVKIT_HOME")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        run = [sys.executable, "-m", "envkit", "run", "--seed", "1", "--image", image]

        # MLflow's defaults against a refused and a silent port, in subprocesses that run while the rest is measured.
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: connections complete in the backlog, requests get no answer
        refused = f"http://127.0.0.1:{free_port()}"
        quiet = f"http://127.0.0.1:{silent.getsockname()[1]}"
        bare = {k: v for k, v in env.items() if k not in HTTP_BOUNDS}
        defaults = {name: subprocess.Popen([sys.executable, "-c", PROBE, u], stdout=subprocess.PIPE, text=True,
                                           env=bare) for name, u in (("refused", refused), ("silent", quiet))}
        started = time.monotonic()

        timed([*run, "--mlflow", uri, "train.py"], project, env)  # warm-up: image probe cached, experiment made
        t = interleaved({"plain": [*run, "train.py"], "mlflow": [*run, "--mlflow", uri, "train.py"]}, args.runs,
                        cwd=project, env=env)
        imp = interleaved({"pass": [sys.executable, "-c", "pass"],
                           "import": [sys.executable, "-c", "import mlflow.tracking"]}, args.runs, env=env)
        down = interleaved({"plain": [*run, "train.py"], "refused": [*run, "--mlflow", refused, "train.py"],
                            "silent": [*run, "--mlflow", quiet, "train.py"]}, max(3, args.runs // 2),
                           cwd=project, env=env)
        results = {}
        for name, proc in defaults.items():
            try:
                out, _ = proc.communicate(timeout=max(1.0, args.default_cap - (time.monotonic() - started)))
                results[name] = (float(out.strip()), "")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                results[name] = (time.monotonic() - started, "> ")
    finally:
        silent.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    plain, tracked = med(t["plain"]), med(t["mlflow"])
    print(f"envkit run of a small job (metrics.json, 1 MiB model), {args.runs} runs each, interleaved, median "
          f"(image {image[:19]}, tracker {uri}):")
    print(f"  envkit run                 {plain:6.2f} s")
    print(f"  envkit run --mlflow URI    {tracked:6.2f} s   x{tracked / plain:.2f}  (+{tracked - plain:.2f} s)")
    imported = med(imp["import"]) - med(imp["pass"])
    print(f"  of which importing MLflow's client: +{imported:.2f} s (python -c 'import mlflow.tracking' "
          f"{med(imp['import']):.2f} s, python -c pass {med(imp['pass']):.2f} s)")
    print(f"Unreachable tracker, {len(down['plain'])} runs each, interleaved, median:")
    base = med(down["plain"])
    for name in ("refused", "silent"):
        mine = med(down[name])
        theirs, more = results[name]
        print(f"  envkit run --mlflow ({name:7s})  {mine:6.2f} s   x{mine / base:.2f} of envkit run "
              f"(+{mine - base:.2f} s); MLflow's own defaults: {more}{theirs:.1f} s for one call")


if __name__ == "__main__":
    main()
