"""`envkit runs` and `envkit show` over 10 and 10,000 recorded runs against plain reads of the same store, in one run.

    python benchmarks/bench_runs_list.py [--sizes 10,10000] [--repeat 5]

Fills a temporary store with realistic records (host fingerprint, a 40-file code manifest, outputs; about 10 KB
each), then times, best of --repeat, each as a fresh process:

- `envkit runs --json`, `envkit runs` (the table) and `envkit show RUN_ID` (with and without --json), the commands
  users type;
- `envkit --version` and `envkit runs --json` on an empty store: start-up alone, the floor under the command;
- `ls runs/`: run ids only, the least a listing can do;
- `cat runs/*/record.json`: reading every record, what a listing without the index would at least cost;
- a Python one-liner that json-loads every record (a naive listing);
- `python -c pass` and `cat` of one record: the floor any Python command stands on, and the least `show` can do.

It also times the first listing after the index is deleted (every record read once, the index rebuilt).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envkit.fingerprint import host_fingerprint
from envkit.manifest import ManifestEntry
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, Fingerprint, ImageInfo, RunRecord, Timings

NAIVE = ("import json,os,sys; d=sys.argv[1]; "
         "rows=[json.load(open(os.path.join(d,n,'record.json'))) for n in sorted(os.listdir(d), reverse=True)]; "
         "print(len(rows))")


def fill(store: FileStore, n: int) -> None:
    fp = host_fingerprint()
    files = [ManifestEntry(f"src/module_{i}.py", 1000 + i, f"{i:064x}") for i in range(40)]
    for i in range(n):
        run_id = store.create_run()
        store.write(RunRecord(
            run_id=run_id, status=("succeeded", "failed", "interrupted")[i % 3], seed=i, script="train.py",
            command=["envkit", "run", "--seed", str(i), "train.py"], args=["--epochs", "3"], exit_code=i % 3,
            environment={"ENVKIT_SEED": str(i), "PYTHONHASHSEED": str(i), "WANDB_API_KEY": "secret"},
            image=ImageInfo(id="sha256:" + "ab" * 32, ref="envkit/cpu:5cc22996c5ac"),
            code=CodeInfo(sha256="cd" * 32, git_commit="ef" * 20, git_dirty=False, files=files),
            outputs=[ManifestEntry("model.pt", 123456, "12" * 32), ManifestEntry("out/metrics.json", 321, "34" * 32)],
            timings=Timings(build_s=0.1, run_s=12.5 + i % 7, total_s=13.0 + i % 7),
            fingerprint=Fingerprint(schema_version=1, host=fp["host"], gpus=fp["gpus"]),
        ))


def timed(cmd: list[str], env: dict[str, str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def measure(n: int, repeat: int, envkit: list[str], empty: str) -> dict[str, float]:
    """Fill a store with ``n`` runs and time the listing and one run's page against plain reads of the same files."""
    with tempfile.TemporaryDirectory(prefix="envkit-bench-runs-") as tmp:
        store = FileStore(Path(tmp), durable=False)  # fsync per record only slows the filling down
        t = time.perf_counter()
        fill(store, n)
        size = sum(p.stat().st_size for p in store.runs_dir.glob("*/record.json"))
        print(f"filled {n} records ({size / n / 1000:.1f} KB each) in {time.perf_counter() - t:.1f} s")
        env = {**os.environ, "ENVKIT_HOME": tmp}
        store.index_path.unlink()
        t = time.perf_counter()
        subprocess.run([*envkit, "runs", "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
        cold = time.perf_counter() - t
        runs_dir = str(store.runs_dir)
        last = max(os.listdir(runs_dir))
        return {
            "envkit runs --json": timed([*envkit, "runs", "--json"], env, repeat),
            "envkit runs (table)": timed([*envkit, "runs"], env, repeat),
            "envkit show RUN_ID": timed([*envkit, "show", last], env, repeat),
            "envkit show RUN_ID --json": timed([*envkit, "show", last, "--json"], env, repeat),
            "envkit --version (start-up)": timed([*envkit, "--version"], env, repeat),
            "envkit runs --json, empty store": timed([*envkit, "runs", "--json"], {**env, "ENVKIT_HOME": empty},
                                                     repeat),
            "python -c pass": timed([sys.executable, "-c", "pass"], env, repeat),
            "cat one record.json": timed(["cat", os.path.join(runs_dir, last, "record.json")], env, repeat),
            "ls runs/": timed(["ls", runs_dir], env, repeat),
            "cat runs/*/record.json": timed(["sh", "-c", f"find {runs_dir} -name record.json -exec cat {{}} +"], env,
                                            repeat),
            "python: json.load every record": timed([sys.executable, "-c", NAIVE, runs_dir], env, repeat),
            "envkit runs --json, no index (once)": cold,
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000", help="store sizes, comma-separated (default 10,10000)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    envkit = [sys.executable, "-m", "envkit"]
    targets = {"envkit runs --json": (0.2, 0.5), "envkit runs (table)": (0.2, 0.5), "envkit show RUN_ID": (0.2, 0.5)}
    with tempfile.TemporaryDirectory() as empty:
        for n in (int(s) for s in args.sizes.split(",")):
            results = measure(n, args.repeat, envkit, empty)
            base = results["python -c pass"]
            print(f"{n} runs, best of {args.repeat}, each a fresh process (ratio: this / python -c pass):")
            for name, seconds in results.items():
                goal = targets.get(name)
                note = f"  goal under {goal[0] if n <= 10 else goal[1]} s" if goal else ""
                print(f"  {name:<36} {seconds:7.3f} s  {seconds / base:6.2f}x{note}")
            ours, floor = results["envkit runs --json"], results["envkit runs --json, empty store"]
            print(f"  listing {n} runs adds {ours - floor:+.3f} s to the command's own start-up ({floor:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
