"""Slurm's overhead per task: the same N commands as one job array against running them directly, in one run.

    python benchmarks/bench_slurm_overhead.py [--tasks 8] [--parallel 2] [--rounds 3] [--command docker|true]
                                              [--max-seconds 300]

Both sides run N copies of one command with at most P at a time:

- direct: a pool of P threads, each running the command as a subprocess (what a local backend does at best);
- slurm: envkit.sweep.slurm.submit_array(..., parallel=P), then wait() polling squeue every 0.2 s, from the
  sbatch call until every task is seen finished.

The two alternate round by round (direct, slurm, direct, slurm, ...), so that load from elsewhere hits both alike,
and the medians are compared. The overhead per task is the extra wall time of the array, shared out over the tasks
each slot ran: (T_slurm - T_direct) * P / N. It includes Slurm's scheduling passes (the one-node test cluster runs
them at once on submit and about once a second afterwards), the batch script and its markers, and polling.

``--command docker`` (default) runs `docker run --rm --init --network none <image> python3 -c pass` on the base
image (envkit/base:bookworm-py3.11) as a sweep's task would start a container; ``true`` measures Slurm alone.
Bounded: at most --rounds rounds, and no round starts after --max-seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envkit.sweep.slurm import SlurmOptions, idle_nodes, submit_array, wait  # noqa: E402

IMAGE = "envkit/base:bookworm-py3.11"


def command_for(kind: str) -> list[str]:
    if kind == "true":
        return ["true"]
    return ["docker", "run", "--rm", "--init", "--network", "none", "--label", "io.envkit.test=1", IMAGE,
            "python3", "-c", "pass"]


def run_direct(command: list[str], n: int, parallel: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        codes = list(pool.map(lambda _: subprocess.run(command, capture_output=True, timeout=300).returncode,
                              range(n)))
    elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"direct run failed: exit codes {codes}")
    return elapsed


def run_slurm(command: list[str], n: int, parallel: int, root: Path, index: int) -> float:
    start = time.perf_counter()
    job = submit_array([command] * n, root / f"round-{index}", SlurmOptions(parallel=parallel, job_name="envkit-bench"))
    tasks = wait(job, poll=0.2, timeout=600)
    elapsed = time.perf_counter() - start
    if any(t.state != "COMPLETED" for t in tasks):
        raise SystemExit(f"slurm run failed: {[(t.index, t.state, t.exit_code) for t in tasks]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--command", choices=("docker", "true"), default="docker")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    if not idle_nodes():
        raise SystemExit("sinfo lists no idle node: run .ci/setup.d/20-slurm.sh (as root) first")
    command = command_for(args.command)
    subprocess.run(command, check=True, capture_output=True, timeout=300)  # warm: image in the page cache
    direct: list[float] = []
    slurm: list[float] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="envkit-bench-slurm-") as tmp:
        for i in range(args.rounds):
            if time.monotonic() - began > args.max_seconds:
                print(f"stopped after {i} rounds (--max-seconds {args.max_seconds:g})")
                break
            direct.append(run_direct(command, args.tasks, args.parallel))
            slurm.append(run_slurm(command, args.tasks, args.parallel, Path(tmp), i))
            print(f"round {i + 1}: direct {direct[-1]:.2f} s, slurm {slurm[-1]:.2f} s", flush=True)
    if not direct:
        raise SystemExit("no round ran")
    t_direct, t_slurm = statistics.median(direct), statistics.median(slurm)
    per_task = (t_slurm - t_direct) * args.parallel / args.tasks
    print(f"\n{args.tasks} tasks of `{' '.join(command)}`, {args.parallel} at a time, median of {len(direct)} rounds")
    print(f"  direct (thread pool):  {t_direct:7.2f} s   {t_direct / args.tasks * args.parallel:6.2f} s per task slot")
    print(f"  slurm job array:       {t_slurm:7.2f} s   {t_slurm / args.tasks * args.parallel:6.2f} s per task slot")
    print(f"  ratio slurm / direct:  {t_slurm / t_direct:7.2f}x")
    print(f"  overhead per task:     {per_task:7.2f} s   (goal: under 1 s)")


if __name__ == "__main__":
    main()
