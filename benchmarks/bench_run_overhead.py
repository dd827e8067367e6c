"""What `envkit run` adds to plain `docker run` for a trivial job, same image and command, interleaved.

Three commands, interleaved, median of --runs each: `envkit run --image IMG`, `envkit run --lock LOCK` (the image
found by its lock: a cache hit, no build) and `docker run --rm --network none -v PROJECT:/work IMG python job.py`.
envkit's extra work: start-up, snapshot and hash the project, fingerprint the host, write the record (fsync) before
the job starts and once more at its end, collect the bootstrap's report, hash the outputs.

    python benchmarks/bench_run_overhead.py [--runs 7]
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


def timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lock", default=str(ROOT / "lockfiles" / "cpu.lock.yaml"))
    args = parser.parse_args()
    project = Path(tempfile.mkdtemp(prefix="envkit-bench-"))
    try:
        (project / "job.py").write_text("print('hello')\n")
        built = subprocess.run([sys.executable, "-m", "envkit", "build", args.lock, "--json"], capture_output=True,
                               text=True, check=True).stdout
        image = json.loads(built)["image_id"]
        base = [sys.executable, "-m", "envkit", "run", "--seed", "1", "--trace", "off"]
        commands = {
            "envkit run --image": [*base, "--image", image, "job.py"],
            "envkit run --lock": [*base, "--lock", args.lock, "job.py"],
            "docker run": ["docker", "run", "--rm", "--network", "none", "-v", f"{project}:/work", "-w", "/work",
                           image, "python", "job.py"],
        }
        for cmd in commands.values():  # warm-up: the first run probes the image's software once and caches it
            timed(cmd, project)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so a busy moment hits every command alike
            for name, cmd in commands.items():
                wall[name].append(timed(cmd, project))
        plain = statistics.median(wall["docker run"])
        print(f"trivial job, {args.runs} runs each, interleaved (image {image[:19]}, load {os.getloadavg()[0]:.1f})")
        for name, times in wall.items():
            m = statistics.median(times)
            added = "" if name == "docker run" else \
                f"  added {m - plain:+.3f} s ({m / plain:.2f}x; goal at most +0.3 s)"
            print(f"  {name:<20} median {m:.3f} s (min {min(times):.3f}, max {max(times):.3f}){added}")
    finally:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
