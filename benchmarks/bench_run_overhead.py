"""What `envkit run` adds to plain `docker run` for a trivial job, same image and command, interleaved.

envkit's extra work: snapshot and hash the project, fingerprint the host, write the record twice (fsync), collect
the bootstrap's report, hash the outputs. The image is found by its lock (a cache hit, no build).

    python benchmarks/bench_run_overhead.py [--runs 7]
"""

from __future__ import annotations

import argparse
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
        import json

        image = json.loads(built)["image_id"]
        envkit_cmd = [sys.executable, "-m", "envkit", "run", "--seed", "1", "--image", image, "job.py"]
        docker_cmd = ["docker", "run", "--rm", "--network", "none", "-v", f"{project}:/work", "-w", "/work", image,
                      "python", "job.py"]
        timed(envkit_cmd, project)  # warm-up: the first run probes the image's software once and caches it
        ours, plain = [], []
        for _ in range(args.runs):
            ours.append(timed(envkit_cmd, project))
            plain.append(timed(docker_cmd, project))
        o, p = statistics.median(ours), statistics.median(plain)
        print(f"trivial job, {args.runs} runs each, interleaved (image {image[:19]})")
        print(f"  envkit run:  median {o:.3f} s (min {min(ours):.3f}, max {max(ours):.3f})")
        print(f"  docker run:  median {p:.3f} s (min {min(plain):.3f}, max {max(plain):.3f})")
        print(f"  added by envkit: {o - p:+.3f} s (ratio {o / p:.2f}x)")
    finally:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
