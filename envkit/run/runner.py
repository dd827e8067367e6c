"""The run workflow: from what a user asks for (:class:`RunRequest`) to a recorded run.

It checks the script, parses mounts, finds or builds the image, settles the CPU profile against the image's own,
fills the :class:`~envkit.run.executor.JobSpec` and executes it. The CLI and the Python API both call :func:`run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from envkit.engine import Engine, Mount
from envkit.errors import CpuProfileError, JobError, ScriptNotFoundError
from envkit.run.executor import RESERVED_TARGETS, JobSpec, Sink, execute
from envkit.run.images import resolve_image
from envkit.settings import DEFAULT_CPU_PROFILE, DEFAULT_DETERMINISM, DEFAULT_THREADS, DEFAULT_TRACE
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
    trace: str = DEFAULT_TRACE
    network: str = "none"
    env: dict[str, str] = field(default_factory=dict)
    memory: str | None = None
    project: Path = field(default_factory=Path.cwd)
    command: list[str] = field(default_factory=list)  # the envkit command line as typed, for the record


def run(engine: Engine, store: FileStore, request: RunRequest, sink: Sink | None = None,
        on_started: Callable[[str], None] | None = None) -> RunRecord:
    """Run a script in its image, seeded and recorded; the final record.

    Raises:
        ScriptNotFoundError, JobError (bad mount, container refused), LockfileError, ImageNotFoundError,
        CpuProfileError (a profile other than the image's), and what building the image raises.
    """
    return execute(engine, store, job_spec(engine, request), sink=sink, on_started=on_started)


def job_spec(engine: Engine, request: RunRequest) -> JobSpec:
    """The job a request runs, its image found or built (a sweep makes it once for all its seeds).

    Raises:
        As :func:`run`, before anything runs.
    """
    project = Path(request.project)
    script = check_script(project, request.script)
    mounts = [parse_mount(m) for m in request.mounts]
    resolved = resolve_image(engine, project, request.lock, request.image,
                             request.cpu_profile or DEFAULT_CPU_PROFILE)
    # An --image already carries its profile's ENV; a different one for the run would be recorded but not in effect.
    cpu_profile = request.cpu_profile or resolved.cpu_profile or DEFAULT_CPU_PROFILE
    if resolved.cpu_profile and resolved.cpu_profile != cpu_profile:
        raise CpuProfileError(f"image {request.image} was built with --cpu-profile {resolved.cpu_profile}, "
                              f"not {cpu_profile}",
                              hint=f"drop --cpu-profile, or build an image with --cpu-profile {cpu_profile}")
    return JobSpec(
        project=project, script=script, args=list(request.args), image_id=resolved.id, image_ref=resolved.ref,
        image_digests=resolved.digests, seed=request.seed, determinism=request.determinism, threads=request.threads,
        cpu_profile=cpu_profile, gpus=request.gpus, mounts=mounts, trace=request.trace, network=request.network,
        lock=resolved.lock, command=list(request.command), build_s=resolved.build_s, lock_text=resolved.lock_text,
        extra_env=dict(request.env), memory=request.memory,
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


def parse_mount(text: str) -> Mount:
    """``SRC:DST`` as a read-only input mount.

    Raises:
        JobError: malformed, a missing source, or a target envkit reserves.
    """
    src, sep, dst = text.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise JobError(f"--mount {text!r} is not SRC:DST with an absolute DST",
                       hint="e.g. --mount ./data:/data (mounted read-only, hashed as inputs)")
    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise JobError(f"--mount source {src} does not exist")
    if dst.rstrip("/") in (*RESERVED_TARGETS, "", "/"):
        raise JobError(f"--mount target {dst} is reserved by envkit")
    return Mount(path, dst.rstrip("/"))
