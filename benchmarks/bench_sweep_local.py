"""The local backend against a shell loop of `docker run`: a 16-seed sweep of a ~2 s job, same parallelism, interleaved.

    python benchmarks/bench_sweep_local.py [--seeds 16] [--parallel 2] [--seconds 2] [--rounds 3]
                                           [--image IMAGE | --lock LOCK] [--max-seconds 900]

Both sides run the same job in the same image, one container per seed, at most --parallel at once:

- plain: `seq 0 N-1 | xargs -P P -I{} docker run --rm --network none -e SEED={} -v PROJECT:/work -w /work IMAGE
  python job.py` (what a user would type without envkit);
- envkit: `envkit sweep --seeds 0-(N-1) --parallel P --image IMAGE --json job.py` (one recorded run per seed: the
  project snapshot, a record written before and after, outputs hashed, the report and its plot at the end).

The job burns --seconds of CPU time (a busy loop, so the runs compete for the cores as a training would) and writes
metrics.json. Rounds alternate (plain, envkit, plain, ...), so that load from elsewhere hits both alike; medians are
compared. Goal: envkit / plain at most 1.25. Bounded: at most --rounds rounds, none started after --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = """import json, os, time
t = time.process_time()
x = 0
while time.process_time() - t < {seconds}:
    x += 1
out = os.environ.get("ENVKIT_OUTPUT_DIR", ".")
json.dump({{"iterations": x}}, open(os.path.join(out, "metrics.json"), "w"))
"""


def timed(cmd: list[str] | str, cwd: Path, env: dict[str, str], shell: bool = False) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=1800,
                          check=False)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {cmd}\n{done.stderr[-2000:]}")
    return elapsed


def image_of(args: argparse.Namespace) -> str:
    if args.image:
        return args.image
    built = subprocess.run([sys.executable, "-m", "envkit", "build", args.lock, "--json"], capture_output=True,
                           text=True, check=True).stdout
    return json.loads(built)["image_id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image")
    parser.add_argument("--lock", default=str(ROOT / "lockfiles" / "cpu.lock.yaml"))
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    image = image_of(args)
    work = Path(tempfile.mkdtemp(prefix="envkit-bench-sweep-"))
    project = work / "project"
    project.mkdir()
    (project / "job.py").write_text(JOB.format(seconds=args.seconds))
    env = {**os.environ, "ENVKIT_HOME": str(work / "store")}
    last = args.seeds - 1
    ours = [sys.executable, "-m", "envkit", "sweep", "--seeds", f"0-{last}", "--parallel", str(args.parallel),
            "--image", image, "--json", "job.py"]
    # --rm and no label: test sessions on a shared engine remove labelled test containers when they end.
    plain = (f"seq 0 {last} | xargs -P {args.parallel} -I{{}} docker run --rm --network none "
             f"-e SEED={{}} -v {project}:/work -w /work {image} python job.py")
    try:
        # Warm-up: the store's first run probes the image's software once (cached); the image in the page cache.
        timed([*ours[:5], "0", *ours[6:]], project, env)
        timed(f"docker run --rm --network none {image} python -c pass", project, env, True)
        mine, theirs = [], []
        began = time.monotonic()
        for i in range(args.rounds):
            if time.monotonic() - began > args.max_seconds:
                print(f"stopped after {i} rounds (--max-seconds {args.max_seconds:g})")
                break
            theirs.append(timed(plain, project, env, shell=True))
            mine.append(timed(ours, project, env))
            print(f"round {i + 1}: docker run loop {theirs[-1]:.2f} s, envkit sweep {mine[-1]:.2f} s", flush=True)
        o, p = statistics.median(mine), statistics.median(theirs)
        paired = statistics.median(a / b for a, b in zip(mine, theirs, strict=True))
        print(f"\n{args.seeds} seeds of a {args.seconds:g} s CPU job, {args.parallel} at a time, median of "
              f"{len(mine)} rounds (image {image[:19]}, {os.cpu_count()} cores)")
        print(f"  shell loop of docker run:  {p:7.2f} s   (fastest {min(theirs):.2f} s)")
        print(f"  envkit sweep (local):      {o:7.2f} s   (fastest {min(mine):.2f} s)")
        print(f"  ratio envkit / loop:       {o / p:7.2f}x   (goal: at most 1.25x); per round, median "
              f"{paired:.2f}x; fastest against fastest {min(mine) / min(theirs):.2f}x")
        print(f"  added per run:             {(o - p) * args.parallel / args.seeds:+7.2f} s")
        print(f"  load average at the end:   {os.getloadavg()[0]:.1f} (other work on this machine slows both)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
