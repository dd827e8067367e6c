"""The run workflow: from what a user asks for (:class:`RunRequest`) to a recorded run.

It checks the script, parses mounts, finds or builds the image, settles the CPU profile against the image's own,
fills the :class:`~envkit.run.executor.JobSpec` and executes it. The CLI and the Python API both call :func:`run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.engine import Engine
from envkit.errors import CpuProfileError, GpuError, JobError, ScriptNotFoundError
from envkit.fingerprint import host_fingerprint
from envkit.run import container as ctr
from envkit.run import gpus as job_gpus
from envkit.run.executor import JobSpec, Sink, execute
from envkit.run.images import ResolvedImage, resolve_image
from envkit.run.inputs import Progress, resolve_input
from envkit.run.mounts import parse_mount
from envkit.run.tracing import resolve_ops_step
from envkit.settings import DEFAULT_CPU_PROFILE, DEFAULT_DETERMINISM, DEFAULT_THREADS, DEFAULT_TRACE, NETWORK_MODES
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord


@dataclass
class RunRequest:
    """A run as a user asks for it (the options of ``envkit run``)."""

    script: str
    args: list[str] = field(default_factory=list)
    seed: int = 0
    lock: Path | None = None
    image: str | None = None
    determinism: str = DEFAULT_DETERMINISM
    threads: int = DEFAULT_THREADS
    gpus: str = "none"
    cpu_profile: str | None = None  # None: the image's own profile, else native
    mounts: list[str] = field(default_factory=list)  # SRC:DST
    trace: str = DEFAULT_TRACE  # envkit.run.tracing: auto | off | N, ops:STEP ...
    network: str = "none"
    env: dict[str, str] = field(default_factory=dict)
    memory: str | None = None
    project: Path = field(default_factory=Path.cwd)
    command: list[str] = field(default_factory=list)  # the envkit command line as typed, for the record
    argv: list[str] | None = None  # `-- COMMAND ARGS`: any command on the image's PATH instead of `python SCRIPT`
    inputs: list[str] = field(default_factory=list)  # RUN:PATH[:DEST], earlier runs' outputs (envkit.run.inputs)
    ignore: list[str] = field(default_factory=list)  # gitignore patterns left out of the snapshot
    shm_size: str | None = None  # default: half the job's memory (envkit.run.container)
    ipc: str | None = None  # private (default) | shareable | host
    env_file: Path | None = None  # Docker-style KEY=VALUE file; --env wins over it
    user: str | None = None  # UID[:GID]; default: the invoking user (an unprivileged uid for root)


def run(engine: Engine, store: FileStore, request: RunRequest, sink: Sink | None = None,
        on_started: Callable[[str], None] | None = None,
        on_warning: Callable[[str], None] | None = None, progress: Progress | None = None) -> RunRecord:
    """Run a script (or, given ``argv``, any command) in its image, seeded and recorded; the final record.

    ``progress(label, total_bytes) -> advance`` is told about the steps that can take a while (the implicit build,
    inputs, snapshot, outputs).

    Raises:
        ScriptNotFoundError, JobError (bad mount, container refused), LockfileError, ImageNotFoundError,
        CpuProfileError (a profile other than the image's), UpstreamError and InputChangedError (an --input), and
        what building the image raises.
    """
    host = host_fingerprint(engine)
    return execute(engine, store, job_spec(engine, store, request, host, progress), sink=sink, on_started=on_started,
                   on_warning=on_warning, progress=progress, fingerprint=host)


def job_spec(engine: Engine, store: FileStore, request: RunRequest, host: dict[str, Any],
             progress: Progress | None = None) -> JobSpec:
    """The job a request runs, its image found or built (a sweep makes it once for all its seeds).

    Args:
        host: this host's fingerprint (:func:`envkit.fingerprint.host_fingerprint`), taken once by the caller.

    Raises:
        As :func:`run`, before anything runs; a GPU check that fails is left to the executor, which records it.
    """
    project = Path(request.project)
    if request.network not in NETWORK_MODES:
        raise JobError(f"network {request.network!r} is not one of {', '.join(NETWORK_MODES)}",
                       hint="none keeps the job hermetic; bridge gives it the network")
    if request.argv is not None and not request.argv:
        raise ScriptNotFoundError("no command after --", hint="e.g. envkit run -- python -m pkg.train")
    script = check_script(project, request.script) if request.argv is None else ""
    mounts = [parse_mount(m) for m in request.mounts]
    upstream = [resolve_input(store, text, progress) for text in request.inputs]
    try:
        gpus = job_gpus.parse_gpus(request.gpus)
    except ValueError as exc:
        raise GpuError(f"--gpus {exc}") from None
    settings = ctr.container_settings(gpus, request.memory, request.shm_size, request.ipc, request.user,
                                      (host.get("host") or {}).get("memory_bytes"))
    env_file = Path(request.env_file).absolute() if request.env_file else None
    ctr.check_job_env(request.env)
    env = {**(ctr.read_env_file(env_file) if env_file else {}), **request.env}
    # The GPU check comes before the image: a CUDA image of several GB is not built for a host that cannot run it.
    # A refusal still goes through the executor, which records the run as failed.
    cuda = job_gpus.request_cuda(engine, request.lock, request.image) if gpus != "none" else None
    try:
        job_gpus.check(gpus, host.get("gpus") or {}, cuda)
        resolved = resolve_image(engine, project, request.lock, request.image,
                                 request.cpu_profile or DEFAULT_CPU_PROFILE, progress=progress)
    except GpuError:  # nothing is built for a job that cannot run here; an --image given is still recorded
        resolved = (resolve_image(engine, project, None, request.image, DEFAULT_CPU_PROFILE) if request.image
                    else ResolvedImage("", None, [], None, None, None))
    # An --image already carries its profile's ENV; a different one for the run would be recorded but not in effect.
    cpu_profile = request.cpu_profile or resolved.cpu_profile or DEFAULT_CPU_PROFILE
    if resolved.cpu_profile and resolved.cpu_profile != cpu_profile:
        raise CpuProfileError(f"image {request.image} was built with --cpu-profile {resolved.cpu_profile}, "
                              f"not {cpu_profile}",
                              hint=f"drop --cpu-profile, or build an image with --cpu-profile {cpu_profile}")
    return JobSpec(
        project=project, script=script, args=list(request.args), image_id=resolved.id, image_ref=resolved.ref,
        image_digests=resolved.digests, seed=request.seed, determinism=request.determinism, threads=request.threads,
        cpu_profile=cpu_profile, mounts=mounts, network=request.network,
        trace=resolve_ops_step(request.trace, store, script),
        lock=resolved.lock, command=list(request.command), build_s=resolved.build_s, lock_text=resolved.lock_text,
        extra_env=env, memory=request.memory, argv=list(request.argv) if request.argv else None,
        upstream=upstream, ignore=list(request.ignore), gpus=gpus, shm_size=settings.shm_size, ipc=settings.ipc,
        ulimits=settings.ulimits, user=settings.user, env_file=str(env_file) if env_file else None,
        # A lock already loaded says its CUDA; parsing its text again would cost a run 50 ms.
        cuda=(resolved.cuda if resolved.lock_text is not None else job_gpus.image_cuda(engine, resolved.id))
        if resolved.id else cuda,
    )


def check_script(project: Path, script: str) -> str:
    """The script as a path relative to the project, or ScriptNotFoundError."""
    path = (project / script).resolve() if not Path(script).is_absolute() else Path(script).resolve()
    if not path.is_file():
        raise ScriptNotFoundError(f"script {script} not found in {project}",
                                  hint="give a Python file inside the project folder (the current directory)")
    try:
        return path.relative_to(project.resolve()).as_posix()
    except ValueError:
        raise ScriptNotFoundError(f"script {script} is outside the project folder {project}",
                                  hint="run envkit from the folder that contains the script") from None
