"""Where a sweep's runs execute: the :class:`Backend` interface, and each seed's state as the store tells it.

A backend takes a sweep record (its seeds are the list of runs to make, its plan what each runs), starts them with
at most ``sweep.parallel`` at once, reports their states while they go, and can cancel them. Every run, whatever
ran it, is made by :func:`envkit.sweep.task.run_seed` and lands in the store as an ordinary run, so what a backend
adds is only how runs are started, followed and stopped. Two exist: :class:`envkit.sweep.local.LocalBackend`
(threads on this host's Docker engine) and :class:`envkit.sweep.slurm_backend.SlurmBackend` (one Slurm job array).
docs/backends.md maps the same operations onto a Kubernetes Indexed Job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from envkit.errors import EnvkitError
from envkit.store.filestore import FileStore
from envkit.store.sweeps import FINISHED_STATES, SweepRecord, SweepStore


@dataclass
class TaskState:
    """One seed: its state (``envkit.store.sweeps.RUN_STATES``), its run once it exists, and what we know."""

    index: int
    seed: int
    state: str = "pending"
    run_id: str | None = None
    exit_code: int | None = None
    node: str | None = None
    note: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def key(self) -> tuple:
        """What a progress display redraws on."""
        return self.state, self.run_id, self.exit_code


Progress = Callable[[list[TaskState]], None]


class Backend(Protocol):
    """Starts, follows and stops the runs of a sweep."""

    name: str

    def submit(self, sweep: SweepRecord) -> None:
        """Start every seed of ``sweep``, at most ``sweep.parallel`` at once. It may add to the record what
        following the sweep later needs (the Slurm job id); the caller writes the record.

        Raises:
            EnvkitError: nothing could be started (e.g. sbatch refused the job, with its message).
        """

    def status(self, sweep: SweepRecord) -> list[TaskState]:
        """Every seed's state now, in seed order."""

    def wait(self, sweep: SweepRecord, on_progress: Progress | None = None) -> list[TaskState]:
        """Block until every seed is finished; ``on_progress`` gets all states whenever one changes.

        Raises:
            KeyboardInterrupt: passed on to the caller, who cancels.
        """

    def cancel(self, sweep: SweepRecord) -> None:
        """Stop every seed: a pending one never starts, a running one is stopped and recorded ``interrupted``."""


def states_from_store(store: FileStore, sweep: SweepRecord,
                      known: dict[int, TaskState] | None = None) -> list[TaskState]:
    """Each seed's state as the store knows it: the task's report, and the run's own record once it exists.

    A seed with no report yet is ``pending``; a report without a run is the task's own word (``running`` while it
    sets up, ``failed`` with the reason when no run could be made). Once there is a run, a final state in the report
    (written after the run's last record write) decides; while the report says ``running``, the record does (a
    follower may have closed it after its task died).

    Args:
        known: states from an earlier call; a finished one is not read again (a poll reads only what can change).
    """
    sweeps = SweepStore(store.root)
    states = []
    for index, seed in enumerate(sweep.seeds):
        if known is not None and index in known and known[index].finished:
            states.append(known[index])
            continue
        task = sweeps.read_task(sweep.sweep_id, index)
        state = TaskState(index, seed, node=_text(task.get("node")), note=_text(task.get("error")))
        run_id = _text(task.get("run_id"))
        if task.get("state") in ("running", "failed") and run_id is None:
            state.state = task["state"]
        if run_id is not None and task.get("state") in FINISHED_STATES:
            code = task.get("exit_code")
            state.run_id, state.state = run_id, task["state"]
            state.exit_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        elif run_id is not None:
            state.run_id = run_id
            try:
                record = store.read(run_id)
            except EnvkitError as exc:  # a record being written on another node, or damaged: the report decides
                state.state = task.get("state") if task.get("state") in FINISHED_STATES else "running"
                state.note = state.note or exc.message
            else:
                state.state, state.exit_code = record.status, record.exit_code
                node = (record.scheduler or {}).get("node")
                state.node = node or state.node
        states.append(state)
    return states


def counts(states: list[TaskState]) -> dict[str, int]:
    """How many seeds are in each state, in a fixed order (for progress lines)."""
    out: dict[str, int] = {}
    for name in ("succeeded", "failed", "oom", "interrupted", "cancelled", "lost", "running", "pending"):
        n = sum(s.state == name for s in states)
        if n:
            out[name] = n
    return out


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
