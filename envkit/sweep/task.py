"""One seed of a sweep, run as an ordinary recorded run: wherever it runs (a thread of the local backend, a Slurm
task on a node), the same function turns the sweep's plan into a :class:`~envkit.run.executor.JobSpec` and runs it
through the executor.

Every seed runs the sweep's frozen project snapshot (``code/`` of the sweep, taken once when it started), so that an
edit made while a long sweep runs, or before a pending Slurm task starts, changes no seed's code. The run's record
gets the project's git state from the plan and names its sweep and index; a Slurm task adds its job, array task and
node. The process running a seed is the only writer of its ``tasks/<index>.json``: the run id as soon as the run
exists (so a follower finds a run that is still going, or one whose container never started), then the outcome.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from envkit.engine import Engine, Mount
from envkit.errors import EnvkitError, ImageNotFoundError, JobError, RegistryError
from envkit.run.executor import JobSpec, Sink, execute
from envkit.store.filestore import FileStore
from envkit.store.record import REDACTED, CodeInfo, ImageInfo, RunRecord
from envkit.store.sweeps import SweepPlan, SweepRecord, SweepStore

QUIET = Sink(None, None)  # a sweep's runs keep their output in their logs; the terminal shows progress


def plan_of(job: JobSpec, code: CodeInfo, project: Path) -> SweepPlan:
    """The sweep's plan from the job its request resolved to (the seed aside)."""
    return SweepPlan(
        script=job.script, args=list(job.args), argv=list(job.argv) if job.argv else None,
        image=ImageInfo(id=job.image_id, ref=job.image_ref, digests=list(job.image_digests),
                        digest=job.image_digests[0] if job.image_digests else None),
        lock=job.lock, code=code, determinism=job.determinism, threads=job.threads, cpu_profile=job.cpu_profile,
        gpus=job.gpus, trace=job.trace, network=job.network, memory=job.memory,
        mounts=[{"source": str(m.source), "target": m.target} for m in job.mounts],
        env=dict(job.extra_env), project=str(project), user=job.user, shm_size=job.shm_size, ipc=job.ipc,
        ulimits={k: list(v) for k, v in job.ulimits.items()}, cuda=job.cuda,
    )


def job_for_seed(sweep: SweepRecord, store: SweepStore, index: int, image_id: str,
                 secrets: Mapping[str, str]) -> JobSpec:
    """The job of seed number ``index``: the plan, that seed, the sweep's snapshot.

    Args:
        secrets: values for the variables the plan holds redacted (the plan on disk never holds them).
    """
    plan = sweep.plan
    layout = store.layout(sweep.sweep_id)
    env = {k: (secrets.get(k, "") if v == REDACTED else v) for k, v in plan.env.items()}
    return JobSpec(
        project=layout.code, script=plan.script, args=list(plan.args), image_id=image_id, image_ref=plan.image.ref,
        image_digests=list(plan.image.digests), seed=sweep.seeds[index], determinism=plan.determinism,
        threads=plan.threads, cpu_profile=plan.cpu_profile, gpus=plan.gpus,
        mounts=[Mount(Path(m["source"]), m["target"]) for m in plan.mounts], trace=plan.trace, extra_env=env,
        network=plan.network, lock=plan.lock, command=list(sweep.command), code_source=layout.code,
        lock_text=layout.lock.read_text(encoding="utf-8") if layout.lock.is_file() else None, memory=plan.memory,
        sweep={"id": sweep.sweep_id, "index": index}, argv=list(plan.argv) if plan.argv else None,
        user=plan.user, shm_size=plan.shm_size, ipc=plan.ipc,
        ulimits={k: (int(v[0]), int(v[1])) for k, v in plan.ulimits.items() if len(v) == 2}, cuda=plan.cuda,
    )


def image_here(engine: Engine, image: ImageInfo) -> tuple[str, list[str]]:
    """The plan's image on this engine: present by ID, else pulled by one of its registry digests (and checked).

    Returns:
        The image ID and a note for the record when it was pulled.

    Raises:
        ImageNotFoundError: neither (with how to get it onto the node). RegistryError: a pull gave another image.
    """
    wanted = image.id or ""
    if wanted and engine.find_image(wanted) is not None:
        return wanted, []
    failures = []
    for ref in dict.fromkeys([d for d in [image.digest, *image.digests] if d]):
        try:
            pulled = engine.pull(ref)
        except RegistryError as exc:
            failures.append(exc.message)
            continue
        if wanted and pulled != wanted:
            raise RegistryError(f"{ref} pulled as image {pulled[:19]}, the sweep runs {wanted[:19]}",
                                hint="the registry holds another image under that name; do not trust it")
        return pulled, [f"image pulled by digest {ref}"]
    tried = f" ({failures[-1]})" if failures else ""
    raise ImageNotFoundError(
        f"image {wanted[:19] or '?'} is not on this node's Docker engine and no registry digest could be pulled{tried}",
        hint="push it with `envkit build LOCK --push REGISTRY/REPO` before submitting, or `docker load` a bundle "
             "made with `envkit export RUN --with-image` on every node (docs/sweeps.md)")


class _TaskStore(FileStore):
    """The run store, telling the sweep the run id the moment the run is created."""

    def __init__(self, root: Path, durable: bool, on_created: Callable[[str], None]) -> None:
        super().__init__(root, durable)
        self._on_created = on_created

    def create_run(self, now=None) -> str:
        run_id = super().create_run(now)
        self._on_created(run_id)
        return run_id


def run_seed(engine: Engine, store: FileStore, sweep: SweepRecord, index: int, *, image_id: str | None = None,
             secrets: Mapping[str, str] | None = None, fingerprint: dict[str, Any] | None = None,
             scheduler: dict[str, str] | None = None, notes: list[str] | None = None,
             stopped: Callable[[str], bool] | None = None,
             queued: Callable[[str], float] | None = None) -> RunRecord | None:
    """Run seed number ``index`` of ``sweep`` and report it in the sweep's ``tasks/<index>.json``.

    Args:
        image_id: the image to run (the local backend found it once); None: find or pull the plan's here.
        secrets: values of the plan's redacted variables.
        fingerprint: this host's fingerprint, when the caller took it once for many seeds.
        scheduler: the batch scheduler's ids, for the record.
        notes: carried into the record.
        stopped: called with the run id at the end; True when the sweep stopped this run's container (it is then
            recorded ``interrupted``, not ``failed``).
        queued: called with the run id at the end; the seconds its container waited for a free slot after the run
            was prepared (the local backend prepares the next runs while others run): taken out of its run time.

    Returns:
        The run's final record; None when no run could be made (the task file says why).

    Raises:
        EnvkitError: only a store that cannot be written; every other failure is reported, not raised.
    """
    sweeps = SweepStore(store.root, store.durable)
    layout = sweeps.layout(sweep.sweep_id)
    report: dict[str, Any] = {"index": index, "seed": sweep.seeds[index], "state": "running"}
    if scheduler:
        report["node"] = scheduler.get("node")
    lock = threading.Lock()

    def tell(**changes: Any) -> None:
        with lock:
            report.update(changes)
            sweeps.write_task(sweep.sweep_id, index, dict(report))

    try:
        if image_id is None:
            image_id, pulled = image_here(engine, sweep.plan.image)
            notes = [*(notes or []), *pulled]
        job = replace(job_for_seed(sweep, sweeps, index, image_id, secrets or {}), scheduler=scheduler,
                      notes=list(notes or []))
    except EnvkitError as exc:
        tell(state="failed", error=exc.message)
        return None
    run_store = _TaskStore(store.root, store.durable, lambda run_id: tell(run_id=run_id))

    def finish(record: RunRecord) -> None:
        code = sweep.plan.code
        record.code.git_commit, record.code.git_dirty = code.git_commit, code.git_dirty
        record.code.diff_sha256 = code.diff_sha256
        if layout.git_diff.is_file():
            shutil.copyfile(layout.git_diff, run_store.layout(record.run_id).git_diff)
        if stopped is not None and record.status != "succeeded" and stopped(record.run_id):
            record.status = "interrupted"
        waited = queued(record.run_id) if queued is not None else 0.0
        if waited > 0.0005 and record.started and record.timings.run_s is not None:
            record.timings.run_s = round(max(0.0, record.timings.run_s - waited), 3)
            began = datetime.fromisoformat(record.started.replace("Z", "+00:00")) + timedelta(seconds=waited)
            record.started = began.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    try:
        record = execute(engine, run_store, job, sink=QUIET, fingerprint=fingerprint, before_final_write=finish)
    except JobError as exc:
        # The container never ran; the executor recorded the run as failed with the reason.
        run_id = report.get("run_id")
        record = store.read(run_id) if run_id else None
        if record is not None and stopped is not None and stopped(record.run_id):
            record.status = "interrupted"  # the sweep stopped it between its creation and its start
            store.write(record)
        tell(state=record.status if record else "failed", error=exc.message)
        return record
    except EnvkitError as exc:  # an input that changed, a CPU below the profile's baseline: before any run
        tell(state="failed", error=exc.message)
        return None
    tell(state=record.status, exit_code=record.exit_code)
    return record
