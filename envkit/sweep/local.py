"""The local backend: a sweep's seeds as runs on this host's Docker engine, at most ``sweep.parallel`` at once.

Each seed runs in a worker thread through :func:`envkit.sweep.task.run_seed`, so each is an ordinary run with its
own record. The image is resolved and the host fingerprinted once for all seeds, not per run.

At most ``sweep.parallel`` containers run at once, but twice as many workers prepare runs: the next seeds' run
folders, snapshots and first records are made while containers run, and a finished run's outputs are hashed and its
record written while the next container already runs. A run waits for a free slot only with everything ready (a
container start takes one; its end gives it back), and that wait is not counted in its run time.

Stopping. The executor stops a container on SIGINT only in the main thread; here the main thread waits, and on
Ctrl-C calls :meth:`LocalBackend.cancel`, which stops every container the sweep created (through a thin proxy of
the engine that remembers them), lets no further seed start, and waits (bounded) for the running seeds to write
their final records, as ``interrupted``. A container created in the instant of the cancel is never started (a
start and a cancel take the same lock).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Mapping
from typing import Any

from envkit.engine import Container, ContainerExit, ContainerSpec, Engine
from envkit.settings import LABEL_RUN
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord
from envkit.store.sweeps import SweepRecord
from envkit.sweep.backend import Progress, TaskState, states_from_store
from envkit.sweep.task import run_seed

CANCEL_WAIT_S = 120.0  # how long a cancel waits for stopped runs to write their records


class LocalBackend:
    """Runs seeds in threads on one engine.

    Args:
        engine: the Docker engine (or a fake).
        store: the run store.
        image_id: the image every seed runs (resolved once by the caller).
        secrets: values of the plan's redacted variables.
        fingerprint: this host's fingerprint, taken once.
        poll: seconds between progress checks.
    """

    name = "local"

    def __init__(self, engine: Engine, store: FileStore, image_id: str, secrets: Mapping[str, str] | None = None,
                 fingerprint: dict[str, Any] | None = None, poll: float = 0.25) -> None:
        self.store = store
        self.image_id = image_id
        self.secrets = dict(secrets or {})
        self.fingerprint = fingerprint
        self.poll = poll
        self._engine = _StoppableEngine(engine)
        self._pool: cf.ThreadPoolExecutor | None = None
        self._futures: list[cf.Future] = []
        self._known: dict[int, TaskState] = {}

    def submit(self, sweep: SweepRecord) -> None:
        parallel = max(1, sweep.parallel)
        self._engine.slots = threading.Semaphore(parallel)
        workers = min(len(sweep.seeds), 2 * parallel)
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="envkit-seed")
        self._futures = [self._pool.submit(self._run, sweep, i) for i in range(len(sweep.seeds))]

    def _run(self, sweep: SweepRecord, index: int) -> RunRecord | None:
        if self._engine.cancelled.is_set():
            return None
        return run_seed(self._engine, self.store, sweep, index, image_id=self.image_id, secrets=self.secrets,
                        fingerprint=self.fingerprint, stopped=self._engine.was_stopped,  # type: ignore[arg-type]
                        queued=self._engine.queued)

    def status(self, sweep: SweepRecord) -> list[TaskState]:
        states = states_from_store(self.store, sweep, self._known)
        for state, future in zip(states, self._futures, strict=False):
            if future.cancelled() and state.state == "pending":
                state.state, state.note = "cancelled", "the sweep was stopped before this seed started"
            elif future.done() and future.exception() is not None and not state.finished:
                exc = future.exception()
                state.state, state.note = "failed", getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        self._known = {s.index: s for s in states}
        return states

    def wait(self, sweep: SweepRecord, on_progress: Progress | None = None) -> list[TaskState]:
        last = None
        while True:
            done = all(f.done() for f in self._futures)
            states = self.status(sweep)
            key = [s.key() for s in states]
            if key != last and on_progress is not None:
                on_progress(states)
            last = key
            if done:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                return states
            # A plain sleep, not cf.wait: Ctrl-C landing inside cf.wait, while it holds the futures' locks one by
            # one, could leave one held and the worker finishing that future blocked for ever.
            time.sleep(self.poll)

    def cancel(self, sweep: SweepRecord) -> None:
        self._engine.stop_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        # A future cancelled before it started never counts as done for cf.wait: wait for the others only.
        cf.wait([f for f in self._futures if not f.cancelled()], timeout=CANCEL_WAIT_S)


class _StoppableEngine:
    """The engine, with every container the sweep creates remembered so that a cancel can stop them all."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.RLock()  # a start and a cancel never interleave
        self._containers: list[_StoppableContainer] = []
        self._stopped: set[str] = set()
        self._waited: dict[str, float] = {}
        self.cancelled = threading.Event()
        self.slots = threading.Semaphore(1)  # containers running at once; the backend sets it to the sweep's

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def create(self, spec: ContainerSpec) -> Container:
        container = _StoppableContainer(self._engine.create(spec), self, spec.labels.get(LABEL_RUN, ""))
        with self._lock:
            self._containers.append(container)
        return container

    def stop_all(self) -> None:
        with self._lock:
            self.cancelled.set()
            containers = list(self._containers)
        # Stop them side by side: each stop may take the engine's grace period.
        threads = [threading.Thread(target=c.stop_for_sweep, daemon=True) for c in containers]
        for t in threads:
            t.start()
        deadline = time.monotonic() + CANCEL_WAIT_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def note_stopped(self, run_id: str) -> None:
        with self._lock:
            self._stopped.add(run_id)

    def was_stopped(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._stopped

    def note_waited(self, run_id: str, seconds: float) -> None:
        with self._lock:
            self._waited[run_id] = seconds

    def queued(self, run_id: str) -> float:
        """How long the run's container waited for a free slot."""
        with self._lock:
            return self._waited.get(run_id, 0.0)


class _StoppableContainer(Container):
    def __init__(self, inner: Container, engine: _StoppableEngine, run_id: str) -> None:
        self._inner = inner
        self._engine = engine
        self._run_id = run_id
        self._started = False
        self._holds_slot = False
        self.id = inner.id

    def start(self):
        began = time.monotonic()
        self._engine.slots.acquire()  # everything is ready: wait here, not before the run was prepared
        self._holds_slot = True
        self._engine.note_waited(self._run_id, time.monotonic() - began)
        with self._engine._lock:
            if self._engine.cancelled.is_set():  # stopped while it waited: never started
                self._engine.note_stopped(self._run_id)
                return iter(())
            self._started = True
            return self._inner.start()

    def wait(self) -> ContainerExit:
        try:
            if not self._started:
                return ContainerExit(130)
            return self._inner.wait()
        finally:
            self._release()

    def _release(self) -> None:
        if self._holds_slot:
            self._holds_slot = False
            self._engine.slots.release()

    def stop(self, timeout: int = 5) -> None:
        self._inner.stop(timeout)

    def stop_for_sweep(self) -> None:
        self._engine.note_stopped(self._run_id)
        self._inner.stop()

    def remove(self) -> None:
        self._release()  # a start that failed gives its slot back here
        self._inner.remove()
