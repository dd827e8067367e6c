"""The Python API: the same workflows as the CLI, for notebooks and pipelines (no subprocess, no parsing of output).

Every function raises :class:`envkit.errors.EnvkitError` subclasses, as the CLI's commands do, and talks to the
Docker engine named by ``DOCKER_HOST``. The store is ``ENVKIT_HOME``, else ``.envkit`` in the project folder (the
current directory by default).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.settings import DEFAULT_DETERMINISM, DEFAULT_THREADS, DEFAULT_TRACE, store_dir

if TYPE_CHECKING:
    from envkit.image.builder import BuildResult
    from envkit.manifest import ManifestEntry
    from envkit.replay import ReplayResult, Verdict
    from envkit.store.filestore import RunSummary
    from envkit.store.record import RunRecord


@dataclass(frozen=True)
class Run:
    """A finished run: ``status`` is succeeded, failed, interrupted or oom; ``record`` has everything."""

    id: str
    status: str
    exit_code: int | None
    outputs: list[ManifestEntry]
    record: RunRecord
    folder: Path

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class Replay:
    """A replay's outcome: ``verdict`` is ``"IDENTICAL"``, ``"DIVERGED"`` or ``"FAILED"``."""

    id: str
    of: str
    verdict: str
    details: Verdict
    record: RunRecord
    notes: list[str]

    @classmethod
    def from_result(cls, result: ReplayResult) -> Replay:
        return cls(id=result.run_id, of=result.original.run_id, verdict=result.verdict.kind,
                   details=result.verdict, record=result.record, notes=list(result.notes))


def _store(project: Path | None):
    from envkit.store.filestore import FileStore

    return FileStore(store_dir(Path(project) if project else None))


def lock(spec: str | Path, output: str | Path | None = None) -> Path:
    """Resolve a spec (envkit.yaml) into a lockfile; returns the lockfile's path
    (default ``lockfiles/<name>.lock.yaml``)."""
    from envkit.engine import connect
    from envkit.lock.locking import lock_spec

    return lock_spec(connect(), Path(spec), Path(output) if output else None).path


def build(lockfile: str | Path, cpu_profile: str = "native", push: str | None = None,
          no_cache: bool = False) -> BuildResult:
    """Build (or find) the image of a lockfile; ``.image_id``, ``.cache_hit``, ``.repo_digest`` (with ``push``)."""
    from envkit.engine import connect
    from envkit.image.builder import build_and_push
    from envkit.lock.model import load_lockfile

    return build_and_push(connect(), load_lockfile(Path(lockfile)), cpu_profile=cpu_profile, no_cache=no_cache,
                          push=push)


def run(script: str, *args: str, seed: int, lock: str | Path | None = None, image: str | None = None,
        determinism: str = DEFAULT_DETERMINISM, threads: int = DEFAULT_THREADS, gpus: str = "none",
        cpu_profile: str | None = None, mounts: Iterable[str] = (), trace: str = DEFAULT_TRACE,
        network: str = "none", env: Mapping[str, str] | None = None, memory: str | None = None,
        project: str | Path | None = None, echo: bool = False) -> Run:
    """Run ``script`` with ``args`` in the lock's (or ``image``'s) image, seeded and recorded.

    Args:
        echo: stream the job's output to this process's stdout/stderr (default: only into the run's logs).
    """
    from envkit.engine import connect
    from envkit.run.executor import Sink
    from envkit.run.runner import RunRequest
    from envkit.run.runner import run as run_workflow

    folder = Path(project) if project else Path.cwd()
    request = RunRequest(script=script, args=[str(a) for a in args], seed=seed, lock=Path(lock) if lock else None,
                         image=image, determinism=determinism, threads=threads, gpus=gpus, cpu_profile=cpu_profile,
                         mounts=list(mounts), trace=trace, network=network, env=dict(env or {}), memory=memory,
                         project=folder)
    store = _store(folder)
    record = run_workflow(connect(), store, request, sink=None if echo else Sink(io.BytesIO(), io.BytesIO()))
    return Run(id=record.run_id, status=record.status, exit_code=record.exit_code, outputs=list(record.outputs),
               record=record, folder=store.run_dir(record.run_id))


def replay(run_id: str, force: bool = False, rebuild: bool = False, project: str | Path | None = None,
           echo: bool = False, pin: bool = True) -> Replay:
    """Replay a recorded run here; ``.verdict`` says IDENTICAL, DIVERGED or FAILED, ``.details`` why.

    Args:
        pin: when the replay diverges between recorded steps more than one step apart, rerun both jobs with every
            step between traced to name the exact step (``.details.divergence``).
    """
    from envkit.engine import connect
    from envkit.pin import replay_pinner
    from envkit.replay import replay as replay_workflow
    from envkit.run.executor import Sink

    engine, store = connect(), _store(project)
    result = replay_workflow(engine, store, run_id, force=force, rebuild=rebuild,
                             sink=None if echo else Sink(io.BytesIO(), io.BytesIO()),
                             after_judge=replay_pinner(engine, store) if pin else None)
    return Replay.from_result(result)


def runs(project: str | Path | None = None, limit: int | None = None) -> list[RunSummary]:
    """The recorded runs, newest first."""
    return _store(project).list(limit=limit).runs


def show(run_id: str, project: str | Path | None = None) -> RunRecord:
    """One run's record."""
    return _store(project).read(run_id)


def _injob_bootstrap() -> Any:
    """The bootstrap that holds this process's seeding state: the image's ``envkit_injob`` when it is active here
    (a job inside an envkit image), else envkit's own copy."""
    import sys

    other = sys.modules.get("envkit_injob.state")
    if other is not None and other.S.active:
        return sys.modules["envkit_injob.bootstrap"]
    from envkit.injob import bootstrap

    return bootstrap


def seed_everything(seed: int, determinism: str = "strict", threads: int | None = None) -> dict[str, Any]:
    """Seed every generator (random, numpy, torch CPU and CUDA) and apply a determinism level, in this process.

    Args:
        seed: the run's seed (0 <= seed < 2**32).
        determinism: ``strict``, ``warn``, ``seed`` or ``off``.
        threads: pin torch / OpenMP thread counts to this number (``None``: leave as is).

    Returns:
        A report of what was seeded and which flags are in effect.
    """
    return _injob_bootstrap().seed_everything(seed, determinism=determinism, threads=threads)


def rng_state() -> dict[str, Any]:
    """Capture the state of every generator seeded by :func:`seed_everything` (for checkpoints)."""
    return _injob_bootstrap().rng_state()


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`; a resumed run continues bit-identically."""
    _injob_bootstrap().set_rng_state(state)
