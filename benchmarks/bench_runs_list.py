"""`envkit runs` over 10,000 recorded runs against plain listings of the same store, side by side in one run.

    python benchmarks/bench_runs_list.py [--runs 10000] [--repeat 5]

Fills a temporary store with realistic records (host fingerprint, a 40-file code manifest, outputs; about 10 KB
each), then times, best of --repeat, each as a fresh process:

- `envkit runs --json` and `envkit runs` (the table), the commands users type;
- `envkit --version` and `envkit runs --json` on an empty store: start-up alone, the floor under the command;
- `ls runs/`: run ids only, the least a listing can do;
- `cat runs/*/record.json`: reading every record, what a listing without the index would at least cost;
- a Python one-liner that json-loads every record (a naive listing).

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    envkit = [sys.executable, "-m", "envkit"]
    with tempfile.TemporaryDirectory(prefix="envkit-bench-runs-") as tmp, tempfile.TemporaryDirectory() as empty:
        store = FileStore(Path(tmp), durable=False)  # fsync per record only slows the filling down
        t = time.perf_counter()
        fill(store, args.runs)
        size = sum(p.stat().st_size for p in store.runs_dir.glob("*/record.json"))
        print(f"filled {args.runs} records ({size / args.runs / 1000:.1f} KB each) in {time.perf_counter() - t:.1f} s")
        env = {**os.environ, "ENVKIT_HOME": tmp}
        store.index_path.unlink()
        t = time.perf_counter()
        subprocess.run([*envkit, "runs", "--json"], env=env, check=True, stdout=subprocess.DEVNULL)
        cold = time.perf_counter() - t
        runs_dir = str(store.runs_dir)
        results = {
            "envkit runs --json": timed([*envkit, "runs", "--json"], env, args.repeat),
            "envkit runs (table)": timed([*envkit, "runs"], env, args.repeat),
            "envkit --version (start-up)": timed([*envkit, "--version"], env, args.repeat),
            "envkit runs --json, empty store": timed([*envkit, "runs", "--json"], {**env, "ENVKIT_HOME": empty},
                                                     args.repeat),
            "ls runs/": timed(["ls", runs_dir], env, args.repeat),
            "cat runs/*/record.json": timed(["sh", "-c", f"find {runs_dir} -name record.json -exec cat {{}} +"], env,
                                            args.repeat),
            "python: json.load every record": timed([sys.executable, "-c", NAIVE, runs_dir], env, args.repeat),
        }
    ours = results["envkit runs --json"]
    print(f"{args.runs} runs, best of {args.repeat}, each a fresh process (ratio: envkit runs --json / this):")
    for name, seconds in results.items():
        ratio = f"{ours / seconds:6.2f}x" if name != "envkit runs --json" else "      -"
        print(f"  {name:<32} {seconds:7.3f} s  {ratio}")
    print(f"  {'envkit runs --json, no index':<32} {cold:7.3f} s   (first listing rebuilds the index)")
    floor = results["envkit runs --json, empty store"]
    print(f"listing 10,000 runs adds {ours - floor:.3f} s to the command's own start-up ({floor:.3f} s); "
          f"in total {'within' if ours < 0.5 else 'over'} the 0.5 s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
