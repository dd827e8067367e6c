"""Slurm's overhead per task: the same envkit sweep as one Slurm job array and on the local backend, interleaved.

    python benchmarks/bench_slurm_overhead.py [--seeds 8] [--parallel 2] [--seconds 1] [--rounds 3]
                                              [--image IMAGE | --lock LOCK] [--max-seconds 600]
    python benchmarks/bench_slurm_overhead.py --raw [--command docker|true]   # Slurm alone, no envkit

Both sides run `envkit sweep --seeds 0-(N-1) --parallel P` of one job (a busy loop of --seconds CPU time that
writes metrics.json) in the same image, from the submitting command to the report:

- local: `--backend local`: the seeds run in threads of the envkit process;
- slurm: `--backend slurm`: one array job (`sbatch --array=0-(N-1)%P`); each task starts envkit on the node
  (a Python start-up, the store read, the host fingerprint) and runs its seed; the submitter polls squeue.

The overhead per task is the extra wall time, shared out over the tasks each slot ran: (T_slurm - T_local) * P / N.
It includes Slurm's scheduling passes (the one-node test cluster schedules at once on submit and when a task ends),
the batch script and its markers, envkit's start on the node (`python -m envkit.sweep.node`), and polling (every
0.5 s at first). Goal: under 1 s.

``--raw`` compares Slurm alone: N copies of one command as an array against a pool of P threads running it
directly (`--command docker`: `docker run --rm <base image> python3 -c pass`; `true`: nothing).

Rounds alternate, medians are compared; at most --rounds rounds, none started after --max-seconds.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envkit.sweep.slurm import SlurmOptions, idle_nodes, submit_array, wait  # noqa: E402

BASE_IMAGE = "envkit/base:bookworm-py3.11"
JOB = """import json, os, time
t = time.process_time()
while time.process_time() - t < {seconds}:
    pass
json.dump({{"seconds": {seconds}}}, open(os.path.join(os.environ["ENVKIT_OUTPUT_DIR"], "metrics.json"), "w"))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, check=False)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return elapsed


def sweeps(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    image = args.image or json.loads(subprocess.run(
        [sys.executable, "-m", "envkit", "build", args.lock, "--json"], capture_output=True, text=True,
        check=True).stdout)["image_id"]
    work = Path(tempfile.mkdtemp(prefix="envkit-bench-slurm-"))
    try:
        project = work / "project"
        project.mkdir()
        (project / "job.py").write_text(JOB.format(seconds=args.seconds))
        env = {**os.environ, "ENVKIT_HOME": str(work / "store")}  # on this one-node cluster: shared with the node

        def sweep(backend: str, seeds: str) -> list[str]:
            return [sys.executable, "-m", "envkit", "sweep", "--seeds", seeds, "--parallel", str(args.parallel),
                    "--backend", backend, "--image", image, "--json", "job.py"]

        timed(sweep("local", "0"), project, env)  # warm-up: the software probe, cached in the store
        timed(sweep("slurm", "0"), project, env)
        local, slurm = [], []
        began = time.monotonic()
        for i in range(args.rounds):
            if time.monotonic() - began > args.max_seconds:
                print(f"stopped after {i} rounds (--max-seconds {args.max_seconds:g})")
                break
            local.append(timed(sweep("local", f"0-{args.seeds - 1}"), project, env))
            slurm.append(timed(sweep("slurm", f"0-{args.seeds - 1}"), project, env))
            print(f"round {i + 1}: local {local[-1]:.2f} s, slurm {slurm[-1]:.2f} s", flush=True)
        print(f"\nenvkit sweep of {args.seeds} seeds, a {args.seconds:g} s CPU job, {args.parallel} at a time "
              f"(image {image[:19]})")
        return local, slurm
    finally:
        shutil.rmtree(work, ignore_errors=True)


def raw(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    command = ["true"] if args.command == "true" else [
        "docker", "run", "--rm", "--init", "--network", "none", BASE_IMAGE,
        "python3", "-c", "pass"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    direct, slurm = [], []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envkit-bench-slurm-") as tmp:
        for i in range(args.rounds):
            if time.monotonic() - began > args.max_seconds:
                break
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                list(pool.map(lambda _: subprocess.run(command, capture_output=True, timeout=300, check=True),
                              range(args.seeds)))
            direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            job = submit_array([command] * args.seeds, Path(tmp) / f"round-{i}",
                               SlurmOptions(parallel=args.parallel, job_name="envkit-bench"))
            tasks = wait(job, poll=0.2, timeout=600)
            slurm.append(time.perf_counter() - start)
            if any(t.state != "COMPLETED" for t in tasks):
                raise SystemExit(f"slurm run failed: {[(t.index, t.state, t.exit_code) for t in tasks]}")
            print(f"round {i + 1}: direct {direct[-1]:.2f} s, slurm {slurm[-1]:.2f} s", flush=True)
    print(f"\n{args.seeds} tasks of `{' '.join(command)}`, {args.parallel} at a time (no envkit)")
    return direct, slurm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image")
    parser.add_argument("--lock", default=str(ROOT / "lockfiles" / "cpu.lock.yaml"))
    parser.add_argument("--raw", action="store_true")
    parser.add_argument("--command", choices=("docker", "true"), default="docker")
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    if not idle_nodes():
        raise SystemExit("sinfo lists no idle node: run .ci/setup.d/20-slurm.sh (as root) first")
    base, slurm = raw(args) if args.raw else sweeps(args)
    if not base:
        raise SystemExit("no round ran")
    t_base, t_slurm = statistics.median(base), statistics.median(slurm)
    paired = statistics.median((s - b) * args.parallel / args.seeds for s, b in zip(slurm, base, strict=True))
    name = "direct (thread pool)" if args.raw else "local backend"
    print(f"  {name + ':':<22} {t_base:7.2f} s   median of {len(base)} rounds")
    print(f"  {'slurm job array:':<22} {t_slurm:7.2f} s")
    print(f"  ratio slurm / {'direct' if args.raw else 'local'}: {t_slurm / t_base:7.2f}x")
    print(f"  overhead per task:     {(t_slurm - t_base) * args.parallel / args.seeds:+7.2f} s   (goal: under 1 s); "
          f"per round, median {paired:+.2f} s")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f} (other work on this machine slows both)")


if __name__ == "__main__":
    main()
