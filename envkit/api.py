"""The Python API: the same workflows as the CLI, for notebooks and pipelines (no subprocess, no parsing of output).

Every function raises :class:`envkit.errors.EnvkitError` subclasses, as the CLI's commands do, and talks to the
Docker engine named by ``DOCKER_HOST``. The store is ``ENVKIT_HOME``, else ``.envkit`` in the project folder (the
current directory by default).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.settings import store_dir

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


def _config(folder: Path | None):
    """The project configuration, with every key envkit's parts own registered (the run package registers its
    own; MLflow's lives in envkit.tracking, which the run package may not import)."""
    from envkit.run.defaults import project_config
    from envkit.tracking import config as _tracking  # noqa: F401 - registers the mlflow key

    return project_config(folder)


def _store(project: Path | None):
    from envkit.store.filestore import FileStore

    return FileStore(store_dir(Path(project) if project else None))


def lock(spec: str | Path, output: str | Path | None = None) -> Path:
    """Resolve a spec (envkit.yaml) into a lockfile; returns the lockfile's path
    (default ``lockfiles/<name>.lock.yaml``)."""
    from envkit.lock.locking import lock_spec

    return lock_spec(None, Path(spec), Path(output) if output else None).path


def build(lockfile: str | Path, cpu_profile: str = "native", push: str | None = None,
          no_cache: bool = False) -> BuildResult:
    """Build (or find) the image of a lockfile; ``.image_id``, ``.cache_hit``, ``.repo_digest`` (with ``push``),
    ``.comparison`` (against the lock's expected image ID: ``.status`` matches, differs or unpinned)."""
    from envkit.engine import connect
    from envkit.image.builder import build_and_push
    from envkit.lock.model import load_lockfile

    return build_and_push(connect(), load_lockfile(Path(lockfile)), cpu_profile=cpu_profile, no_cache=no_cache,
                          push=push)


def run(script: str | None = None, *args: str, command: Sequence[str] | None = None, seed: int | None = None,
        lock: str | Path | None = None, image: str | None = None, determinism: str | None = None,
        threads: int | None = None, gpus: str | None = None, cpu_profile: str | None = None,
        mounts: Iterable[str] = (), inputs: Iterable[str] = (), trace: str | None = None, network: str | None = None,
        env: Mapping[str, str] | None = None, memory: str | None = None, project: str | Path | None = None,
        echo: bool = False, shm_size: str | None = None, ipc: str | None = None, env_file: str | Path | None = None,
        user: str | None = None) -> Run:
    """Run ``script`` with ``args`` (or any ``command``, as ``envkit run -- COMMAND``) in the lock's (or
    ``image``'s) image, seeded and recorded.

    Options left None come from the project's configuration (``[tool.envkit]`` / ``envkit.toml``, found upward
    from ``project``), then envkit's defaults, as on the command line.

    Args:
        command: argv of any command on the image's PATH, e.g. ``["torchrun", "--nproc-per-node", "2", "t.py"]``.
        inputs: ``RUN:PATH[:DEST]`` earlier runs' outputs as inputs (``RUN``: an id, a unique prefix, ``last``).
        echo: stream the job's output to this process's stdout/stderr (default: only into the run's logs).
        gpus, shm_size, ipc, env_file, user: as ``envkit run``'s options (docs/gpu.md).

    Raises:
        TypeError: neither or both of ``script`` and ``command``, or no seed here or in the configuration.
    """
    from envkit.engine import connect
    from envkit.run.defaults import run_settings
    from envkit.run.executor import Sink
    from envkit.run.runner import RunRequest
    from envkit.run.runner import run as run_workflow

    if (script is None) == (command is None) or (command is not None and args):
        raise TypeError("give a script (and its args) or a command, not both")
    folder = Path(project) if project else Path.cwd()
    settings = run_settings(_config(folder), seed=seed, lock=Path(lock) if lock else None, image=image,
                            determinism=determinism, threads=threads, gpus=gpus, cpu_profile=cpu_profile,
                            network=network, trace=trace, memory=memory, mounts=list(mounts),
                            env={k: str(v) for k, v in (env or {}).items()})
    if settings["seed"] is None:
        raise TypeError("run() needs a seed: pass seed=N or set seed in the project configuration")
    request = RunRequest(script=script or "", args=[str(a) for a in args], project=folder, inputs=list(inputs),
                         argv=[str(a) for a in command] if command is not None else None, shm_size=shm_size,
                         ipc=ipc, env_file=Path(env_file) if env_file else None, user=user, **settings)
    store = _store(folder if project else None)
    record = run_workflow(connect(), store, request, sink=None if echo else Sink(io.BytesIO(), io.BytesIO()))
    return Run(id=record.run_id, status=record.status, exit_code=record.exit_code, outputs=list(record.outputs),
               record=record, folder=store.run_dir(record.run_id))


def replay(run_id: str, force: bool = False, rebuild: bool = False, project: str | Path | None = None,
           echo: bool = False, ignore_lines: Sequence[str] = (), upstream: bool = False,
           gpus: str | None = None, pin: bool = True) -> Replay:
    """Replay a recorded run here (``run_id``: an id, a unique prefix or ``last``); ``.verdict`` says IDENTICAL,
    DIVERGED, FAILED or UNVERIFIED (nothing to compare), ``.details`` why.

    Args:
        ignore_lines: regular expressions of stdout lines left out of the comparison (with the project
            configuration's ``ignore_lines``).
        upstream: replay the runs it took ``inputs`` from first, then this run on their replays' outputs; the
            result is this run's replay, or the first upstream replay that was not IDENTICAL.
        gpus: the GPUs to replay with instead of the recorded request (``all``, ``N``, ``device=0,2``).
        pin: when a replay diverges between recorded steps more than one step apart, rerun both jobs with every
            step between traced to name the exact step (``.details.divergence``).
    """
    from envkit.engine import connect
    from envkit.lineage import replay_chain
    from envkit.pin import replay_pinner
    from envkit.replay import replay as replay_workflow
    from envkit.run.executor import Sink
    from envkit.stdoutcompare import configured_patterns

    store = _store(project)
    run_id = store.resolve(run_id)
    patterns = list(dict.fromkeys([*configured_patterns(_config(Path(project) if project else None)),
                                   *ignore_lines]))
    engine = connect()
    options: dict[str, Any] = {"force": force, "rebuild": rebuild, "ignore_lines": patterns,
                               "sink": None if echo else Sink(io.BytesIO(), io.BytesIO()),
                               "after_judge": replay_pinner(engine, store) if pin else None}
    if upstream:
        chain = replay_chain(engine, store, run_id, **options)
        stopped = next((r for r in chain.results if r.original.run_id == chain.stopped_at), None)
        return Replay.from_result(stopped or chain.results[-1])
    return Replay.from_result(replay_workflow(engine, store, run_id, gpus=gpus, **options))


def runs(project: str | Path | None = None, limit: int | None = None) -> list[RunSummary]:
    """The recorded runs, newest first."""
    return _store(project).list(limit=limit).runs


def show(run_id: str, project: str | Path | None = None) -> RunRecord:
    """One run's record (``run_id``: an id, a unique prefix or ``last``)."""
    store = _store(project)
    return store.read(store.resolve(run_id))


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
