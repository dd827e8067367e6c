"""The sweep workflow: one recorded run per seed, grouped under a sweep id, on a backend; and reading sweeps back.

:func:`start_sweep` resolves the run's image once, freezes the project (one snapshot for every seed), writes the
sweep record, hands the seeds to the backend (local threads or one Slurm job array), follows them with progress,
and closes the record: ``succeeded`` when every seed's run succeeded, ``failed`` when one did not (the others are
kept), ``interrupted`` after Ctrl-C or SIGTERM (the backend stops what runs; unfinished runs are recorded
``interrupted``). :func:`follow` does the following part again for a sweep submitted with ``wait=False``.

:func:`load_sweep` gives a sweep, its runs' records and per-metric statistics to other parts of envkit (MLflow's
export); :func:`report` the same for the CLI's report; :func:`compare_sweeps` tests two sweeps against each other.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.engine import Engine
from envkit.errors import EnvkitError, SweepError
from envkit.run.runner import RunRequest, job_spec
from envkit.run.snapshot import git_info, list_project, snapshot
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, RunRecord, redact_environment, utc_now
from envkit.store.sweeps import SweepRecord, SweepRun, SweepStore
from envkit.sweep import stats
from envkit.sweep.backend import Backend, Progress, TaskState, states_from_store
from envkit.sweep.parallel import bound_parallel, parse_size
from envkit.sweep.slurm import SlurmOptions
from envkit.sweep.task import plan_of

CANCEL_SETTLE_S = 120.0  # after a cancel, how long to wait for the runs to write their final records


@dataclass
class SweepRequest:
    """A sweep as a user asks for it: the run (its seed aside), the seeds, where and how many at once."""

    run: RunRequest
    seeds: list[int]
    base_seed: int | None = None
    parallel: int | None = None
    backend: str = "local"
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    wait: bool = True
    single: bool = False  # `envkit run --backend slurm`


@dataclass
class SweepOutcome:
    """A sweep record as it stands, each seed's state, and notes for the user (a cut parallelism)."""

    sweep: SweepRecord
    states: list[TaskState]
    notes: list[str] = field(default_factory=list)


def start_sweep(engine: Engine, store: FileStore, request: SweepRequest, on_progress: Progress | None = None,
                on_submitted: Callable[[SweepRecord], None] | None = None,
                backend: Backend | None = None) -> SweepOutcome:
    """Run (or submit) every seed of a sweep.

    Args:
        on_progress: every seed's state, whenever one changes.
        on_submitted: called with the sweep record once its seeds are handed to the backend.
        backend: use this one (tests); default: the request's.

    Raises:
        SweepError (bad options), what resolving the image raises (as ``envkit run``), SlurmError (sbatch refused
        or Slurm unreachable). Failed runs are not errors: they are in the outcome.
    """
    if request.backend not in ("local", "slurm"):
        raise SweepError(f"unknown backend {request.backend!r}", hint="use --backend local or --backend slurm")
    if not request.seeds:
        raise SweepError("no seeds given", hint="e.g. --seeds 0-9 or --n 10")
    if request.parallel is not None and request.parallel < 1:
        raise SweepError(f"--parallel {request.parallel} is not a positive number", hint="e.g. --parallel 2")
    if request.run.memory is not None:
        parse_size(request.run.memory)
    if request.backend == "local" and not request.wait:
        raise SweepError("a local sweep runs in this process: --no-wait needs --backend slurm",
                         hint="drop --no-wait, or submit to Slurm with --backend slurm")
    from envkit.fingerprint import host_fingerprint
    from envkit.run import gpus as job_gpus

    host = host_fingerprint(engine)
    job = job_spec(engine, store, request.run, host)
    if request.backend == "local":  # a run records a GPU refusal as a failed run; a sweep stops before any
        job_gpus.check(job.gpus, host.get("gpus") or {}, job.cuda)
    if job.upstream:
        raise SweepError("--input is not supported in sweeps or on Slurm yet",
                         hint="--mount the earlier run's output folder (it is hashed as an input), or copy it into "
                              "the project")
    notes = []
    if request.backend == "local":
        parallelism = bound_parallel(request.parallel, len(request.seeds), job.threads, job.memory)
        parallel = parallelism.runs
        notes += [parallelism.note] if parallelism.note else []
    else:  # Slurm places the tasks; --parallel only throttles the array (%P)
        parallel = min(request.parallel or len(request.seeds), len(request.seeds))
    sweeps = SweepStore(store.root, store.durable)
    sweep_id = sweeps.create()
    try:
        sweep = _freeze(store, sweeps, sweep_id, request, job, parallel, notes)
    except BaseException:
        shutil.rmtree(sweeps.layout(sweep_id).root, ignore_errors=True)  # nothing half-written stays behind
        raise
    if backend is None:
        backend = _backend(engine, store, request, job, host)
    try:
        backend.submit(sweep)
    except BaseException:
        # Nothing started (sbatch refused, Slurm unreachable): a sweep that never ran is not kept.
        shutil.rmtree(sweeps.layout(sweep_id).root, ignore_errors=True)
        raise
    sweeps.write(sweep)
    if on_submitted is not None:
        on_submitted(sweep)
    if not request.wait:
        return SweepOutcome(sweep, backend.status(sweep), notes)
    return SweepOutcome(sweep, _wait(store, sweep, backend, on_progress), notes)


def follow(store: FileStore, sweep_id: str, on_progress: Progress | None = None, wait: bool = False,
           engine: Engine | None = None) -> SweepOutcome:
    """A sweep's states now (and, with ``wait``, until every seed is finished); its record brought up to date."""
    sweeps = SweepStore(store.root, store.durable)
    sweep = sweeps.read(sweep_id)
    backend = _backend_of(store, sweep)
    if sweep.status != "running":
        return SweepOutcome(sweep, _states_of(sweep))
    if wait:
        return SweepOutcome(sweep, _wait(store, sweep, backend, on_progress, cancel_on_interrupt=False))
    states = backend.status(sweep)
    _apply(sweep, states, interrupted=False, final=all(s.finished for s in states))
    sweeps.write(sweep)
    return SweepOutcome(sweep, states)


def cancel_sweep(store: FileStore, sweep_id: str) -> SweepOutcome:
    """Cancel a submitted sweep's unfinished seeds (Slurm: scancel; they are recorded interrupted)."""
    sweeps = SweepStore(store.root, store.durable)
    sweep = sweeps.read(sweep_id)
    if sweep.status != "running":
        return SweepOutcome(sweep, _states_of(sweep), [f"sweep {sweep_id} is already {sweep.status}"])
    backend = _backend_of(store, sweep)
    if sweep.backend == "local":
        raise SweepError(f"sweep {sweep_id} runs locally, in the envkit process that started it",
                         hint="press Ctrl-C there (or send it SIGTERM): it stops the runs and records them")
    backend.cancel(sweep)
    return SweepOutcome(sweep, _settle(store, sweep, backend, interrupted=True))


def _freeze(store: FileStore, sweeps: SweepStore, sweep_id: str, request: SweepRequest, job: Any, parallel: int,
            notes: list[str]) -> SweepRecord:
    """The project snapshot, git state and lockfile of the sweep, and its first record."""
    layout = sweeps.layout(sweep_id)
    project = Path(request.run.project)
    listing = list_project(project, exclude_dirs=[store.root], ignore=job.ignore)  # what one run would snapshot
    notes += [listing.warning] if listing.warning else []
    code = snapshot(project, layout.code, files=listing.files)
    gi = git_info(project)
    if gi is not None and gi.dirty:
        layout.git_diff.write_bytes(gi.diff.encode("utf-8", "surrogateescape"))
    if job.lock_text is not None:
        layout.lock.write_text(job.lock_text, encoding="utf-8")
    info = CodeInfo(sha256=code.sha256, git_commit=gi.commit if gi else None, git_dirty=gi.dirty if gi else None,
                    diff_sha256=gi.diff_sha256 if gi and gi.dirty else None)
    plan = plan_of(job, info, project)
    plan.env = redact_environment(plan.env)
    sweep = SweepRecord(sweep_id=sweep_id, plan=plan, seeds=list(request.seeds),
                        runs=[SweepRun(i, seed) for i, seed in enumerate(request.seeds)],
                        command=list(request.run.command), base_seed=request.base_seed, backend=request.backend,
                        parallel=parallel, single=request.single, notes=list(notes))
    sweeps.write(sweep)
    return sweep


def _backend(engine: Engine, store: FileStore, request: SweepRequest, job: Any, host: dict[str, Any]) -> Backend:
    if request.backend == "slurm":
        from envkit.sweep.slurm_backend import SlurmBackend

        return SlurmBackend(store, request.slurm, secrets=job.extra_env)
    from envkit.sweep.local import LocalBackend

    return LocalBackend(engine, store, job.image_id, secrets=job.extra_env, fingerprint=host)


def _backend_of(store: FileStore, sweep: SweepRecord) -> Backend:
    """A backend to follow a sweep started by another process."""
    if sweep.backend == "slurm":
        from envkit.sweep.slurm_backend import SlurmBackend

        return SlurmBackend(store)
    return _StoreOnly(store)


class _StoreOnly:
    """A local sweep seen from another process: only the store says how its seeds stand."""

    name = "local"

    def __init__(self, store: FileStore) -> None:
        self.store = store

    def submit(self, sweep: SweepRecord) -> None:  # pragma: no cover - never submits
        raise SweepError("a local sweep runs in the process that started it")

    def status(self, sweep: SweepRecord) -> list[TaskState]:
        return states_from_store(self.store, sweep)

    def wait(self, sweep: SweepRecord, on_progress: Progress | None = None) -> list[TaskState]:
        last = None
        while True:
            states = self.status(sweep)
            if [s.key() for s in states] != last and on_progress is not None:
                on_progress(states)
            last = [s.key() for s in states]
            if all(s.finished for s in states) or SweepStore(self.store.root).read(sweep.sweep_id).status != "running":
                return states
            time.sleep(1.0)

    def cancel(self, sweep: SweepRecord) -> None:  # pragma: no cover - refused by cancel_sweep
        raise SweepError("a local sweep is stopped in the process that started it")


def _wait(store: FileStore, sweep: SweepRecord, backend: Backend, on_progress: Progress | None,
          cancel_on_interrupt: bool = True) -> list[TaskState]:
    """Wait for every seed; on Ctrl-C or SIGTERM cancel them (when this process owns the sweep) and settle."""
    sweeps = SweepStore(store.root, store.durable)
    try:
        with _stop_signals_as_interrupt():
            states = backend.wait(sweep, on_progress)
    except KeyboardInterrupt:
        if not cancel_on_interrupt:
            raise
        backend.cancel(sweep)
        states = _settle(store, sweep, backend, interrupted=True)
        if on_progress is not None:
            on_progress(states)
        return states
    _apply(sweep, states, interrupted=False, final=True)
    sweeps.write(sweep)
    return states


def _settle(store: FileStore, sweep: SweepRecord, backend: Backend, interrupted: bool) -> list[TaskState]:
    """After a cancel: wait (bounded) until the stopped runs have written their records; close the sweep."""
    deadline = time.monotonic() + CANCEL_SETTLE_S
    while True:
        try:
            states = backend.status(sweep)
        except EnvkitError:  # Slurm went away meanwhile: what the store says is all there is
            states = states_from_store(store, sweep)
        if all(s.finished for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for s in states:
        if not s.finished:  # never started, or still closing: it will not be counted
            s.state = "cancelled" if s.run_id is None else "interrupted"
    _apply(sweep, states, interrupted=interrupted, final=True)
    SweepStore(store.root, store.durable).write(sweep)
    return states


@contextlib.contextmanager
def _stop_signals_as_interrupt() -> Iterator[None]:
    """Ctrl-C and SIGTERM (a batch system, `kill`) stop a sweep, instead of leaving its containers running. Both are
    handled explicitly, as the executor handles them for a run: a sweep started in the background of a script
    inherits SIGINT ignored, and `kill -INT` must still stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _apply(sweep: SweepRecord, states: list[TaskState], interrupted: bool, final: bool) -> None:
    for run, state in zip(sweep.runs, states, strict=True):
        run.state, run.run_id, run.exit_code = state.state, state.run_id, state.exit_code
        run.node, run.note = state.node, state.note
    if not final:
        return
    kinds = {s.state for s in states}
    if kinds <= {"succeeded"}:
        sweep.status = "succeeded"
    elif interrupted or kinds & {"interrupted", "cancelled"}:
        sweep.status = "interrupted"
    else:
        sweep.status = "failed"
    sweep.finished = utc_now()


def _states_of(sweep: SweepRecord) -> list[TaskState]:
    return [TaskState(r.index, r.seed, r.state, r.run_id, r.exit_code, r.node, r.note) for r in sweep.runs]


# --- reading sweeps back -------------------------------------------------------------------------------------------
def summarize(store: FileStore, sweep: SweepRecord) -> tuple[stats.SweepSummary, list[tuple[RunRecord, Path]]]:
    """The per-metric statistics of a sweep's runs (only succeeded runs count), and the runs' records.

    A sweep still running (on Slurm, or in another process) is read as the store has it now: its record is brought
    up to date in memory from the tasks' reports, without asking the scheduler.
    """
    if sweep.status == "running":
        _apply(sweep, states_from_store(store, sweep), interrupted=False, final=False)
    rows, runs = [], []
    for run in sweep.runs:
        record = None
        if run.run_id is not None:
            try:
                record = store.read(run.run_id)
            except EnvkitError:
                record = None
        if record is not None:
            runs.append((record, store.run_dir(record.run_id)))
            rows.append(stats.RunMetrics(run.seed, record.run_id, record.status, record.metrics))
        else:
            rows.append(stats.RunMetrics(run.seed, run.run_id or "-", run.state, None))
    return stats.summarize(rows), runs


def load_sweep(store: FileStore, sweep_id: str) -> tuple[SweepRecord, list[tuple[RunRecord, Path]],
                                                         dict[str, dict[str, Any]]]:
    """A sweep, its runs and its statistics, for other parts of envkit (MLflow's ``export_sweep``).

    Returns:
        ``(sweep record, [(run record, run folder)] in seed order, {metric: {"n", "mean", "std", "min", "max",
        "ci95_low", "ci95_high"}})``; a statistic that does not exist (one value: no std) is None.

    Raises:
        SweepError: malformed id. SweepNotFoundError: no such sweep. StoreError: an unreadable sweep record.
    """
    sweep = SweepStore(store.root).read(sweep_id)
    summary, runs = summarize(store, sweep)
    table = {m.name: {"n": m.n, "mean": m.mean, "std": m.std, "min": m.min, "max": m.max, "ci95_low": m.ci_low,
                      "ci95_high": m.ci_high} for m in summary.metrics}
    return sweep, runs, table


def compare_sweeps(store: FileStore, sweep_a: str, sweep_b: str) -> stats.Comparison:
    """Is each shared metric's difference between two sweeps larger than the seed noise? (Welch's t-test)"""
    sweeps = SweepStore(store.root)
    return stats.compare(summarize(store, sweeps.read(sweep_a))[0], summarize(store, sweeps.read(sweep_b))[0])
