"""envkit's reproducible build against the plain ways, measured side by side in one run, interleaved:

- cold: `envkit build --no-cache` of the CPU lock (venv in a container of the base, bytecode, the layer written by
  envkit, `docker load`) against a hand-written two-stage Dockerfile on the same base that installs the same
  wheels with `pip --no-index --require-hashes` and compiles bytecode the same way (the same sharded
  `compileall --invalidation-mode unchecked-hash` over everything in the venv, torch's own tests included), then
  copies the venv into a second stage; `docker build --no-cache`. Both start with the base on the engine and the
  wheels on disk; each image is removed after its round, so every round loads and commits its layers afresh.
- no-op: `envkit build` of a lock already built (find the image in envkit's map, tag it) against
  `docker image inspect` of that image.
- base: the Debian base from cached .debs (`envkit base make`, the cache entry of the base removed first) against
  `debootstrap --variant=minbase` from its own package cache plus `docker import` (what `envkit base` did before).

The bench's lock is the CPU lock with another SOURCE_DATE_EPOCH, so its base and venv layers are its own: removing
its images really empties the engine of them (the test suite's images share the committed lock's layers).

    python benchmarks/bench_build.py [--rounds 2] [--only cold,noop,base]
"""

from __future__ import annotations

import argparse
import dataclasses
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
EPOCH = 1_700_000_123  # not the committed lock's: layers of the bench's own
COMPILE_SHARDS = 8


def envkit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envkit", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **env})


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def bench_lock(work: Path) -> Path:
    from envkit.lock.model import load_lockfile, write_lockfile

    work.mkdir(parents=True, exist_ok=True)
    lock = load_lockfile(ROOT / "lockfiles" / "cpu.lock.yaml")
    bench = dataclasses.replace(lock, name="cpubench", epoch=EPOCH, images={}, image_parts=None).sealed()
    path = work / "cpubench.lock.yaml"
    write_lockfile(bench, path)
    return path


def dockerfile(base_id: str, plan) -> str:
    """The plain way: the same install and the same bytecode in a first stage, the venv copied into a second."""
    env = " \\\n    ".join(f'{k}="{v}"' for k, v in plan.env.items())
    return f"""FROM {base_id} AS install
COPY wheels/ /tmp/envkit/wheels/
COPY requirements.lock.txt /tmp/envkit/requirements.lock.txt
COPY site/ /tmp/envkit/site/
COPY compile.py /tmp/envkit/compile.py
RUN {" && ".join(plan.venv_command[2].splitlines()[:3])} \\
 && python3 /tmp/envkit/compile.py /opt/envkit/venv/lib {COMPILE_SHARDS}
FROM {base_id}
COPY --from=install /opt/envkit/venv /opt/envkit/venv
ENV {env}
WORKDIR /work
CMD ["python"]
"""


def cold(work: Path, env: dict[str, str], rounds: int) -> None:
    from envkit.image import assemble
    from envkit.image.render import plan_build
    from envkit.image.wheels import WheelSources, ensure_wheels, link_or_copy
    from envkit.lock.model import load_lockfile

    lock_path = bench_lock(work)
    lock = load_lockfile(lock_path)
    base_id = json.loads(envkit("base", "make", str(lock_path), "--json", env=env).stdout)["image_id"]
    plan = plan_build(lock)
    ctx = work / "ctx"
    (ctx / "wheels").mkdir(parents=True)
    os.environ["ENVKIT_CACHE"] = env["ENVKIT_CACHE"]
    for wheel in ensure_wheels(lock.packages, Path(env["ENVKIT_CACHE"]) / "wheels",
                               sources=WheelSources.for_lock(lock)):
        link_or_copy(wheel, ctx / "wheels" / wheel.name)
    (ctx / "requirements.lock.txt").write_text(plan.requirements)
    for name, data in plan.site_files.items():
        (ctx / "site" / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / "site" / name).write_bytes(data)
    (ctx / "Dockerfile").write_text(dockerfile(base_id, plan))
    (ctx / "compile.py").write_text(assemble._SHARDED_COMPILE)  # the very script envkit runs
    ours, plain = [], []
    for i in range(rounds):
        def run_ours() -> None:
            out = json.loads(envkit("build", str(lock_path), "--no-cache", "--json", env=env).stdout)
            run_ours.image = out["image_id"]

        def run_plain() -> None:
            log = docker("build", "--no-cache", "--network", "none", "-t", "envkit-bench/plain:cold", str(ctx))
            # the install stage stays behind as an image of its own: removed by ID after the round


            froms = [i for i, ln in enumerate(log.splitlines()) if " : FROM " in ln]
            before_second = [ln for ln in log.splitlines()[:froms[1]] if ln.strip().startswith("---> ")]
            run_plain.stage = before_second[-1].split()[-1] if before_second else None


        for name, fn in ((("ours", run_ours), ("plain", run_plain)) if i % 2 == 0
                         else (("plain", run_plain), ("ours", run_ours))):
            seconds = timed(fn)
            (ours if name == "ours" else plain).append(seconds)
            print(f"  round {i + 1}: {name} {seconds:.1f} s", flush=True)
            if name == "ours":
                subprocess.run(["docker", "rmi", run_ours.image], capture_output=True)
            else:
                subprocess.run(["docker", "rmi", "envkit-bench/plain:cold"], capture_output=True)
                if run_plain.stage:
                    subprocess.run(["docker", "rmi", run_plain.stage], capture_output=True)
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"cold build of the CPU lock, {rounds} rounds each, interleaved: envkit {o:.1f} s, two-stage Dockerfile "
          f"{p:.1f} s: {o / p:.2f}x (goal at most 1.3x)")


def noop(work: Path, env: dict[str, str], runs: int = 9) -> None:
    lock_path = bench_lock(work)
    image = json.loads(envkit("build", str(lock_path), "--json", env=env).stdout)["image_id"]
    ours, plain = [], []
    for _ in range(runs):
        ours.append(timed(lambda: envkit("build", str(lock_path), env=env)))
        plain.append(timed(lambda: docker("image", "inspect", "--format", "{{.Id}}", image)))
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"no-op build, {runs} runs each, interleaved: `envkit build` {o:.3f} s (min {min(ours):.3f}), "
          f"`docker image inspect` {p:.3f} s: {o / p:.2f}x (goal under 0.5 s)")
    subprocess.run(["docker", "rmi", image], capture_output=True)


def base(work: Path, env: dict[str, str], rounds: int) -> None:
    from envkit.image.bases import bases_dir, debian_key
    from envkit.lock.model import load_lockfile

    lock_path = bench_lock(work)
    lock = load_lockfile(lock_path)
    os.environ["ENVKIT_CACHE"] = env["ENVKIT_CACHE"]
    entry = bases_dir() / debian_key(lock)
    envkit("base", "make", str(lock_path), env=env)  # the .debs into the cache (network, once)
    debs = work / "debootstrap-cache"
    debs.mkdir()
    root = work / "rootfs"
    ours, plain = [], []

    def run_ours() -> None:
        shutil.rmtree(entry, ignore_errors=True)
        out = json.loads(envkit("base", "make", str(lock_path), "--json", env=env).stdout)
        run_ours.image = out["image_id"]

    def run_plain() -> None:
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-pip,"
                        "ca-certificates", f"--cache-dir={debs}", "bookworm", str(root)], check=True,
                       capture_output=True)
        subprocess.run(f"tar -C {root} -c . | docker import - envkit-bench/debootstrap:1", shell=True, check=True,
                       capture_output=True)

    run_plain()  # warm debootstrap's own package cache, as envkit's .deb cache is warm
    subprocess.run(["docker", "rmi", "envkit-bench/debootstrap:1"], capture_output=True)
    for i in range(rounds):
        for name, fn in ((("ours", run_ours), ("plain", run_plain)) if i % 2 == 0
                         else (("plain", run_plain), ("ours", run_ours))):
            seconds = timed(fn)
            (ours if name == "ours" else plain).append(seconds)
            print(f"  round {i + 1}: {name} {seconds:.1f} s", flush=True)
            if name == "plain":
                subprocess.run(["docker", "rmi", "envkit-bench/debootstrap:1"], capture_output=True)
            else:
                subprocess.run(["docker", "rmi", run_ours.image], capture_output=True)
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"Debian base from cached .debs, {rounds} rounds each, interleaved: envkit {o:.1f} s (reproducible), "
          f"debootstrap + docker import {p:.1f} s (not): {o / p:.2f}x (goal under 60 s)")
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default="cold,noop,base")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="envkit-bench-build-"))
    env = {"ENVKIT_CACHE": os.environ.get("ENVKIT_CACHE") or str(Path.home() / ".cache" / "envkit")}
    try:
        for part in args.only.split(","):
            print(f"{part}:", flush=True)
            {"cold": lambda: cold(work / "cold", env, args.rounds), "noop": lambda: noop(work / "noop", env),
             "base": lambda: base(work / "base", env, args.rounds)}[part]()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
