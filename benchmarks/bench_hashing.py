"""Manifest hashing throughput against `sha256sum` over the same files, measured side by side in one run.

    python benchmarks/bench_hashing.py [--big-mb 1024] [--small 4000] [--repeat 3]

Two trees: a few big files (model weights, datasets) and many small ones (a source tree, image folders). The files
are read once beforehand so that every contender hashes from the page cache: this measures hashing, not the disk.
Contenders: envkit's manifest(), `sha256sum` over the file list (one process), the same with `xargs -P <cores>`,
and for the snapshot (copy + hash) `cp -a` (which copies without hashing). Best of --repeat runs each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from envkit.manifest import manifest
from envkit.run.snapshot import snapshot


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def make_tree(root: Path, sizes: list[int]) -> int:
    block = os.urandom(1 << 20)
    total = 0
    for i, size in enumerate(sizes):
        path = root / f"d{i % 64:02d}" / f"f{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, len(block))
                f.write(block[:n])
                left -= n
        total += size
    return total


def sh(cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, shell=True, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def bench(name: str, root: Path, total: int, repeat: int) -> None:
    sh("find . -type f -print0 | xargs -0 cat > /dev/null", root)  # warm the page cache
    cores = os.cpu_count() or 1
    ours = best(lambda: manifest(root), repeat)
    plain = best(lambda: sh("find . -type f -print0 | xargs -0 sha256sum", root), repeat)
    plain_p = best(lambda: sh(f"find . -type f -print0 | xargs -0 -n 64 -P {cores} sha256sum", root), repeat)

    def ours_snapshot() -> None:
        dest = Path(tempfile.mkdtemp(dir=root.parent))
        try:
            snapshot(root, dest / "c", files=files)
        finally:
            shutil.rmtree(dest)

    def plain_copy() -> None:
        dest = Path(tempfile.mkdtemp(dir=root.parent))
        try:
            sh(f"cp -a . {dest}/c", root)
        finally:
            shutil.rmtree(dest)

    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    snap = best(ours_snapshot, repeat)
    copy = best(plain_copy, repeat)
    gb = total / 1e9
    print(f"\n{name}: {len(files)} files, {gb:.2f} GB")
    print(f"  envkit manifest()            {gb / ours:6.2f} GB/s")
    print(f"  sha256sum (1 process)        {gb / plain:6.2f} GB/s   envkit / sha256sum = {plain / ours:.2f}x")
    print(f"  sha256sum (xargs -P {cores:<2})      {gb / plain_p:6.2f} GB/s   "
          f"envkit / parallel  = {plain_p / ours:.2f}x")
    print(f"  envkit snapshot() copy+hash  {gb / snap:6.2f} GB/s")
    print(f"  cp -a (copy, no hash)        {gb / copy:6.2f} GB/s   snapshot / cp -a   = {copy / snap:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=1024, help="total size of the big-file tree (MiB)")
    parser.add_argument("--small", type=int, default=4000, help="number of small files (4-64 KiB)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("sha256sum is not installed; nothing to compare against", file=sys.stderr)
        return 1
    print(f"{os.cpu_count()} cores; ratios > 1 mean envkit is faster")
    with tempfile.TemporaryDirectory(prefix="envkit-bench-hash-") as tmp:
        big = Path(tmp) / "big"
        total = make_tree(big, [256 << 20] * max(1, args.big_mb // 256))
        bench("big files", big, total, args.repeat)
        shutil.rmtree(big)
        small = Path(tmp) / "small"
        sizes = [(4 + (i * 37) % 61) << 10 for i in range(args.small)]
        total = make_tree(small, sizes)
        bench("small files", small, total, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
