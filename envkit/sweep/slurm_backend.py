"""The Slurm backend: a sweep as ONE job array whose task I runs seed number I on its node.

Each task runs ``python -m envkit.sweep.node --store STORE SWEEP_ID I`` (:func:`envkit.sweep.task.run_seed` on the
node, without the command line's start-up cost): the sweep's plan and its frozen project snapshot are read from the
store, which must be on a filesystem every node shares with the submitting host; the image is the plan's, by image ID (loaded on the node) or pulled by registry
digest (and checked against the ID); the run's record goes into that shared store with the task's Slurm job id,
array job and task ids and node name. The array asks for ``--cpus-per-task`` = the run's threads and ``--mem`` = its
``--memory``, so that Slurm packs tasks onto the nodes; the user's own sbatch arguments come after and win.

A seed's state is the run's record once it exists; before, and when a task ends without finishing its record
(scancel's SIGKILL after its grace period, a node failure, a time limit), Slurm's state (``squeue``, else the
task's exit marker) decides, and such a record is closed as ``interrupted`` (cancelled, timed out, preempted) or
``failed``, with Slurm's state as a note. Slurm says CANCELLED the moment scancel is called, while the task's envkit
is still stopping its container and writing its record; so a record is only ever closed here once the task's
processes are surely gone (:meth:`envkit.sweep.slurm.TaskStatus.processes_gone`), never beside a live writer.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from envkit.errors import SlurmError
from envkit.settings import ENV_SLURM_PYTHON
from envkit.store.filestore import FileStore
from envkit.store.sweeps import SweepRecord, SweepStore
from envkit.sweep import slurm
from envkit.sweep.backend import Progress, TaskState, states_from_store

STOPPED = {"CANCELLED": "interrupted", "TIMEOUT": "interrupted", "PREEMPTED": "interrupted", "DEADLINE": "interrupted"}
_LOG_TAIL = 400


def task_command() -> list[str]:
    """What a task runs on its node: ``$ENVKIT_SLURM_PYTHON`` (else this Python) ``-m envkit.sweep.node``."""
    return [os.environ.get(ENV_SLURM_PYTHON) or sys.executable, "-m", "envkit.sweep.node"]


def slurm_memory(docker_size: str | None) -> str | None:
    """A run's ``--memory`` (docker syntax: bytes, or k/m/g suffixed) as sbatch's ``--mem`` (whole MiB)."""
    from envkit.sweep.parallel import parse_size

    if docker_size is None:
        return None
    return f"{max(1, math.ceil(parse_size(docker_size) / 2**20))}M"


class SlurmBackend:
    """Submits, follows and cancels one job array per sweep.

    Args:
        store: the run store (on a filesystem the nodes share).
        options: partition, gres, time and pass-through sbatch arguments; parallelism and resources come from the
            sweep.
        secrets: values of the plan's redacted variables: they reach the tasks through sbatch's environment
            (which Slurm hands to every task), never through a file of the store.
        poll: the longest wait between squeue polls: they start at half a second (a short sweep ends when its
            last task does, not up to a poll later) and slow down by a second a minute up to this.
    """

    name = "slurm"

    def __init__(self, store: FileStore, options: slurm.SlurmOptions | None = None,
                 secrets: Mapping[str, str] | None = None, poll: float = 5.0) -> None:
        self.store = store
        self.secrets = dict(secrets or {})
        self.sweeps = SweepStore(store.root, store.durable)
        self.options = options or slurm.SlurmOptions()
        self.poll = poll

    def submit(self, sweep: SweepRecord) -> None:
        command = [*task_command(), "--store", str(self.store.root.absolute()), sweep.sweep_id]
        options = replace(self.options, parallel=sweep.parallel, job_name=f"envkit-{sweep.sweep_id[-8:]}",
                          cpus_per_task=sweep.plan.threads, mem=slurm_memory(sweep.plan.memory))
        job = slurm.submit_array([[*command, str(i)] for i in range(len(sweep.seeds))],
                                 self.sweeps.layout(sweep.sweep_id).slurm, options,
                                 environ={**os.environ, **self.secrets} if self.secrets else None)
        sweep.slurm = {"job_id": job.job_id, "partition": options.partition, "gres": options.gres,
                       "time": options.time, "sbatch_args": list(options.extra_args)}

    def job(self, sweep: SweepRecord) -> slurm.ArrayJob:
        job_id = (sweep.slurm or {}).get("job_id")
        if not isinstance(job_id, str) or not job_id.isdigit():
            raise SlurmError(f"sweep {sweep.sweep_id} has no Slurm job id", hint="it was never submitted")
        return slurm.ArrayJob(job_id, len(sweep.seeds), self.sweeps.layout(sweep.sweep_id).slurm)

    def status(self, sweep: SweepRecord) -> list[TaskState]:
        job = self.job(sweep)
        tasks = slurm.status(job)
        states = states_from_store(self.store, sweep)
        for state, task in zip(states, tasks, strict=True):
            state.node = state.node or task.node
            if state.state == "abandoned":
                # The store calls a running record whose envkit process is gone "abandoned". On Slurm that process
                # is the task's: Slurm's view decides (still ending, or ended: then the record is closed below).
                state.state = "running"
            if not task.finished:
                if state.state == "pending" and task.state in ("RUNNING", "COMPLETING"):
                    state.state = "running"  # the task is up and starting envkit
                elif state.state == "pending" and task.reason:
                    state.note = f"Slurm: {task.state} ({task.reason})"
                continue
            started = bool(task.extra)  # the task's start marker: its script ran on a node
            if state.state not in ("pending", "running"):
                continue
            if started and not task.processes_gone():
                # Slurm says CANCELLED the moment scancel is called; the task's envkit is still stopping its
                # container and closing its record. It is finished when it has.
                state.state, state.note = "running", f"Slurm: {task.state}; the task is ending"
            elif state.run_id is not None and task.state == "COMPLETED":
                # envkit exited 0: it wrote the final record, which this host's view of the shared filesystem
                # does not show yet (NFS attribute caching). Never close it from here.
                state.state, state.note = "running", "Slurm: COMPLETED; waiting for the run's record to show"
            elif state.run_id is None:
                why = f"Slurm: {task.state}" + (f", exit {task.exit_code}" if task.exit_code is not None else "")
                tail = _log_tail(job.log_path(state.index)) if started else ""
                state.state = "cancelled" if task.state == "CANCELLED" else "lost"
                state.note = why + (f": {tail}" if tail else "")
            else:
                self._close(state, task)
        return states

    def _close(self, state: TaskState, task: slurm.TaskStatus) -> None:
        """A task whose processes are gone while its run still reads ``running``: it died before it could finish
        the record (SIGKILL after scancel's grace period, a node failure). Close the record."""
        try:
            record = self.store.read(state.run_id)
        except Exception:  # noqa: BLE001 - a record that cannot be read stays as it is; the seed is lost
            state.state, state.note = "lost", f"Slurm: {task.state}; the run's record cannot be read"
            return
        if record.status in ("running", "abandoned"):  # abandoned: read here, on the node that ran it
            record.status = STOPPED.get(task.state, "failed")
            record.notes.append(f"Slurm ended the task ({task.state}) before the run could finish its record")
            self.store.write(record)
        state.state, state.note = record.status, f"Slurm: {task.state}"

    def wait(self, sweep: SweepRecord, on_progress: Progress | None = None) -> list[TaskState]:
        last = None
        failures = 0
        began = time.monotonic()
        while True:
            pause = min(self.poll, 0.5 + (time.monotonic() - began) / 60)
            try:
                states = self.status(sweep)
                failures = 0
            except SlurmError:
                # A controller restarting for a moment must not end a wait of hours; a lasting outage does.
                failures += 1
                if failures >= slurm.POLL_FAILURES:
                    raise
                time.sleep(self.poll)
                continue
            key = [s.key() for s in states]
            if key != last and on_progress is not None:
                on_progress(states)
            last = key
            if all(s.finished for s in states):
                return states
            time.sleep(pause)

    def cancel(self, sweep: SweepRecord) -> None:
        slurm.cancel(self.job(sweep).job_id)


def _log_tail(path: Path) -> str:
    """The last line of a task's log: why a task that made no run failed (a missing image, envkit not found)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    text = lines[-1] if lines else ""
    if text.startswith("hint:") and len(lines) > 1:
        text = lines[-2]
    return "".join(c if c.isprintable() else "?" for c in text)[:_LOG_TAIL]
