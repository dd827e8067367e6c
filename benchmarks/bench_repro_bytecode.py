"""Bytecode for the CPU lock's venv: ``compileall -j 1`` against ``-j 0`` and envkit's fixed shards, side by side.

Installs the lock's wheels once (envkit's venv recipe, in a container of the base), copies the tree three times,
compiles each copy one way, and prints each way's time, its ratio to ``-j 1``, and how many .pyc files differ from
``-j 1`` (the reproducible reference: one process, one order). Then writes the venv layer twice (seconds, MB, same
diff_id) and loads nothing.

    python benchmarks/bench_repro_bytecode.py [--base IMAGE] [--lock lockfiles/cpu.lock.yaml] [--rounds 2]

Each way runs --rounds times, interleaved; the best time of each is printed (on a shared machine, load shifts).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from envkit.image import assemble, oci
from envkit.image.render import in_image_files, render_requirements
from envkit.image.wheels import ensure_wheels
from envkit.lock.model import load_lockfile
from envkit.settings import cache_dir

EPOCH = 1_700_000_000
VENV = "/opt/envkit/venv"


def docker_run(base: str, mounts: dict[Path, str], argv: list[str]) -> float:
    cmd = ["docker", "run", "--rm", "--network", "none"]
    for src, dst in mounts.items():
        cmd += ["-v", f"{src}:{dst}"]
    t0 = time.monotonic()
    subprocess.run([*cmd, base, *argv], check=True, capture_output=True)
    return time.monotonic() - t0


def pycs(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.pyc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="envkit/base:bookworm-py3.11")
    parser.add_argument("--lock", default="lockfiles/cpu.lock.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    lock = load_lockfile(Path(args.lock))
    work = Path(tempfile.mkdtemp(prefix="envkit-bench-bytecode-"))
    try:
        ctx = work / "ctx"
        (ctx / "wheels").mkdir(parents=True)
        (ctx / "site").mkdir()
        for wheel in ensure_wheels(lock.packages, cache_dir() / "wheels"):
            shutil.copyfile(wheel, ctx / "wheels" / wheel.name)
        for name, data in in_image_files().items():
            (ctx / "site" / name).parent.mkdir(parents=True, exist_ok=True)
            (ctx / "site" / name).write_bytes(data)
        (ctx / "requirements.lock.txt").write_text(render_requirements(lock))
        installed = work / "installed"
        installed.mkdir()
        argv = assemble.venv_command(lock.python)
        install_only = ["sh", "-ec", argv[2].replace(assemble.compile_command(VENV), "true")]
        mounts = {ctx / "wheels": assemble.WHEELS_MOUNT + ":ro", ctx / "site": assemble.SITE_MOUNT + ":ro",
                  ctx / "requirements.lock.txt": assemble.REQUIREMENTS_MOUNT + ":ro"}
        seconds = docker_run(args.base, {**mounts, installed: VENV}, install_only)
        print(f"venv install (pip, no bytecode): {seconds:.1f} s")
        ways = {
            "-j 1": f"PYTHONHASHSEED=0 python3 -m compileall -q -j 1 --invalidation-mode unchecked-hash {VENV}/lib",
            "-j 0": f"PYTHONHASHSEED=0 python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash {VENV}/lib",
            f"{assemble.COMPILE_SHARDS} shards": assemble.compile_command(VENV),
        }
        times: dict[str, float] = {}
        trees: dict[str, dict[str, str]] = {}
        for round_ in range(args.rounds):
            order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
            for way in order:
                tree = work / way.replace(" ", "")
                shutil.rmtree(tree, ignore_errors=True)
                shutil.copytree(installed, tree, symlinks=True)
                took = docker_run(args.base, {tree: VENV}, ["sh", "-c", ways[way] + " >/dev/null 2>&1; true"])
                times[way] = min(times.get(way, took), took)
                result = pycs(tree)
                if way in trees and trees[way] != result:
                    print(f"compileall {way}: two rounds wrote different .pyc files")
                trees[way] = result
        ref = trees["-j 1"]
        for way in ways:
            differ = sum(1 for k, v in trees[way].items() if ref.get(k) != v)
            print(f"compileall {way:>9}: {times[way]:6.1f} s  ({times['-j 1'] / times[way]:.2f}x the speed of -j 1)"
                  f"  {len(trees[way])} .pyc, {differ} differ from -j 1  ({os.cpu_count()} cores)")
        tree = work / f"{assemble.COMPILE_SHARDS}shards"
        for i in (1, 2):
            t0 = time.monotonic()
            layer = oci.write_layer(tree, work / f"layer{i}.tar", EPOCH, prefix=VENV.strip("/"))
            print(f"venv layer {i}: {time.monotonic() - t0:.1f} s, {layer.size / 1e6:.0f} MB, {layer.diff_id}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
