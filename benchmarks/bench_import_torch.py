"""`import torch` in a fresh container of the CPU image against the host's own Python (both torch 2.13.0 CPU).

The image ships hash-based bytecode (compileall --invalidation-mode unchecked-hash), so a fresh container does not
compile torch again. Timed inside each interpreter (perf_counter around the import), interleaved, medians.

    python benchmarks/bench_import_torch.py [--image IMAGE] [--runs 7]

IMAGE defaults to the image built from lockfiles/cpu.lock.yaml (found by its lock label).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPET = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"


def default_image() -> str:
    import docker

    client = docker.from_env()
    images = client.images.list(filters={"label": "io.envkit.lock.name=cpu"})
    if not images:
        sys.exit("no envkit CPU image; build it first: envkit build lockfiles/cpu.lock.yaml")
    return images[0].id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    image = args.image or default_image()
    container, host = [], []
    for _ in range(args.runs):
        out = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "python", "-c", SNIPPET],
                             capture_output=True, text=True, check=True).stdout
        container.append(float(out.strip().splitlines()[-1]))
        out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True).stdout
        host.append(float(out.strip().splitlines()[-1]))
    c, h = statistics.median(container), statistics.median(host)
    print(f"import torch, {args.runs} runs each, interleaved (image {image[:19]})")
    print(f"  fresh container: median {c:.3f} s (min {min(container):.3f}, max {max(container):.3f})")
    print(f"  host venv:       median {h:.3f} s (min {min(host):.3f}, max {max(host):.3f})")
    print(f"  ratio container/host: {c / h:.2f}x")


if __name__ == "__main__":
    main()
