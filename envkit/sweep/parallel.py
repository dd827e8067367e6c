"""How many seeds run at once on this host: bounded by its cores and by its memory.

* Cores: a run pins its CPU threads (``--threads``, default 1), so ``cores // threads`` runs keep every core busy
  without two runs sharing one; the cores are those this process may use (``os.sched_getaffinity``, which follows
  cgroup cpusets and ``taskset``), not the machine's.
* Memory: with ``--memory M`` each container is limited to M, so ``MemAvailable // M`` runs fit at once. Without it
  envkit cannot know what a job needs, so it assumes :data:`ASSUMED_JOB_MEMORY` per run for the bound and sets no
  limit (give ``--memory`` for a job that needs more). ``MemAvailable`` is the kernel's own estimate of what can be
  allocated without swapping (``/proc/meminfo``).

``--parallel N`` asks for N; more than the bound is cut to it, with a note saying which bound and why. The Slurm
backend uses none of this: Slurm places tasks by their ``--cpus-per-task`` and ``--mem``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envkit import sizes
from envkit.errors import SweepError

ASSUMED_JOB_MEMORY = 2 << 30  # bytes per run when --memory is not given


@dataclass(frozen=True)
class Parallelism:
    """The number of runs at once and, when a bound cut what was asked, why."""

    runs: int
    cores: int
    memory_bound: int
    note: str | None = None


def parse_size(text: str) -> int:
    """A sweep's ``--memory`` (Docker's syntax: ``512m``, ``1.5g``, ``1073741824``) in bytes, as each run gets it.

    Raises:
        SweepError: not a size, or zero (a budget of nothing).
    """
    try:
        size = sizes.parse_size(text)
    except ValueError as exc:
        raise SweepError(f"--memory {exc}", hint="give bytes or a size with a unit: 512m, 4g") from None
    if size == 0:
        raise SweepError(f"--memory {text!r} is not a size a run can have", hint="give a size such as 512m or 4g")
    return size


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` in bytes, or None where the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def bound_parallel(requested: int | None, n_seeds: int, threads: int, memory: str | None,
                   cores: int | None = None, available: int | None = None) -> Parallelism:
    """How many of ``n_seeds`` runs to make at once here.

    Args:
        requested: ``--parallel`` (None: as many as the bounds allow).
        threads: the CPU threads each run pins.
        memory: each run's ``--memory`` (docker syntax) or None.
        cores, available: this host's usable cores and available memory (bytes); measured when None.

    Raises:
        SweepError: ``requested`` is below 1, or ``memory`` is not a size.
    """
    if requested is not None and requested < 1:
        raise SweepError(f"--parallel {requested} is not a positive number", hint="e.g. --parallel 2")
    cores = cores or usable_cores()
    per_run = parse_size(memory) if memory else ASSUMED_JOB_MEMORY
    available = available if available is not None else available_memory()
    by_cores = max(1, cores // max(1, threads))
    by_memory = max(1, available // per_run) if available else by_cores
    bound = min(by_cores, by_memory)
    wanted = requested if requested is not None else bound
    runs = max(1, min(wanted, bound, n_seeds))
    note = None
    if requested is not None and requested > bound:
        why = (f"{cores} usable cores / {threads} thread(s) per run" if by_cores <= by_memory else
               f"{available / 2**30:.1f} GiB available / {per_run / 2**30:.1f} GiB per run"
               + ("" if memory else " (assumed; give --memory)"))
        note = f"--parallel {requested} cut to {bound}: {why}"
    return Parallelism(runs, cores, by_memory, note)
