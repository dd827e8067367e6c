"""What a Slurm array task runs on its node: ``python -m envkit.sweep.node --store STORE SWEEP_ID INDEX``.

It runs seed number INDEX of the sweep (:func:`envkit.sweep.task.run_seed`) against the node's Docker engine and
writes the run into the shared store, with the task's Slurm ids. It is the lean twin of the hidden command
``envkit sweep _task`` (same arguments, same function): it skips the command line's Typer, Click and rich, a third
of a second of start-up per task that every seed of a big array would pay.

Its output goes to the task's log: the run's one-line outcome, or, when no run could be made, ``error: ...`` and
``hint: ...`` as the CLI prints them (the sweep's status shows that line). The exit code is the job's, 130 when
interrupted, or the error's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

from envkit.errors import EnvkitError
from envkit.store.record import REDACTED, RunRecord


def run_task(store_root: Path, sweep_id: str, index: int) -> tuple[RunRecord | None, str | None]:
    """Run one seed here; ``(its final record, None)``, or ``(None, why no run was made)``.

    Raises:
        EnvkitError: the sweep cannot be read, or the index is not one of its seeds.
    """
    from envkit.engine import connect
    from envkit.errors import SweepError
    from envkit.store.filestore import FileStore
    from envkit.store.sweeps import SweepStore
    from envkit.sweep.slurm import slurm_context
    from envkit.sweep.task import run_seed

    sweeps = SweepStore(store_root)
    sweep = sweeps.read(sweep_id)
    if not 0 <= index < len(sweep.seeds):
        raise SweepError(f"sweep {sweep_id} has {len(sweep.seeds)} seeds; there is no seed number {index}")
    # Redacted values never reach the store: they come with the task's environment (sbatch exports the submitter's).
    secrets = {k: os.environ[k] for k, v in sweep.plan.env.items() if v == REDACTED and k in os.environ}
    context = slurm_context() or {}
    scheduler = {"backend": "slurm", "job_id": context.get("SLURM_JOB_ID", ""),
                 "array_job_id": context.get("SLURM_ARRAY_JOB_ID", ""),
                 "array_task_id": context.get("SLURM_ARRAY_TASK_ID", ""),
                 "node": context.get("SLURMD_NODENAME", "")} if context else None
    record = run_seed(connect(), FileStore(store_root), sweep, index, secrets=secrets, scheduler=scheduler)
    if record is None:
        return None, str(sweeps.read_task(sweep_id, index).get("error") or "no run was made")
    return record, None


def stop_on_sigterm() -> None:
    """scancel's SIGTERM before the executor takes over its signals (it does while the container runs) unwinds like
    Ctrl-C, so that a container already created is removed; Python's default would end the process on the spot."""

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def exit_code(record: RunRecord) -> int:
    """The task's exit code for a run: the job's, 130 when interrupted."""
    return 130 if record.status == "interrupted" else (record.exit_code or 0)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the seed, print its outcome; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m envkit.sweep.node", description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, type=Path, help="the shared run store")
    parser.add_argument("sweep_id")
    parser.add_argument("index", type=int)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        record, reason = run_task(args.store, args.sweep_id, args.index)
    except EnvkitError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    if record is None:
        print(f"error: seed number {args.index} of sweep {args.sweep_id}: {reason}", file=sys.stderr)
        return 1
    print(f"seed {record.seed}: run {record.run_id} {record.status}, exit {record.exit_code}", flush=True)
    return exit_code(record)


if __name__ == "__main__":
    sys.exit(main())
