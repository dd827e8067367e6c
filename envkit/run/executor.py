"""The job in its container: snapshot, mounts, environment, live output, signals, outputs, the record.

One :func:`execute` call is one run. Its order is what makes a record trustworthy:

1. a run folder and a ``running`` record exist before the container starts (a crash leaves a record, not nothing);
2. the project snapshot (``code/``, pristine) and its working copy (``work/``, mounted read-write at /work);
3. inputs given with ``mount`` are hashed and mounted read-only;
4. the container runs with the seed, determinism level, thread count and CPU profile in its environment, no Docker
   socket, as the invoking user; its output streams live and into the run's logs;
5. SIGINT / SIGTERM stop the container; whatever happens the container is removed, and the record ends in a final
   status (a container that cannot be created or started ends ``failed``, with the reason as a note);
6. outputs (files created or changed in ``work/`` and everything under ``$ENVKIT_OUTPUT_DIR``) are hashed, the
   job's metrics.json read (:mod:`envkit.store.metrics`), the bootstrap's per-process reports collected, and the
   final record written atomically.

Everything engine-side goes through :class:`envkit.engine.Engine`, so the whole sequence runs against a fake in unit
tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from envkit import cpuprofile
from envkit.engine import Container, ContainerSpec, Engine, GpuRequest, Mount
from envkit.errors import EnvkitError, InputChangedError, JobError
from envkit.manifest import ManifestEntry, manifest, outputs_between
from envkit.run import gpus as job_gpus
from envkit.run.container import without_ulimits
from envkit.run.inputs import Progress, UpstreamInput, is_mount_point, make_mount_points, remove_mount_points
from envkit.run.processes import count_processes
from envkit.run.snapshot import git_info, list_project, snapshot
from envkit.run.tracing import trace_environment
from envkit.settings import (
    CONTAINER_META,
    CONTAINER_OUTPUT,
    CONTAINER_TOOLS,
    CONTAINER_WORKDIR,
    ENV_CPU_PROFILE,
    ENV_DETERMINISM,
    ENV_OUTPUT_DIR,
    ENV_REPORT_DIR,
    ENV_RUN_ID,
    ENV_SEED,
    ENV_THREADS,
    JOB_HOSTNAME,
    JOB_UID,
    LABEL_RUN,
    PIDS_LIMIT,
)
from envkit.store.filestore import FileStore, process_start
from envkit.store.layout import RunLayout, output_name
from envkit.store.metrics import read_metrics
from envkit.store.record import CodeInfo, Fingerprint, ImageInfo, LockInfo, RunRecord, Timings, utc_now

# Never outputs: bytecode caches a job's imports may leave (PYTHONDONTWRITEBYTECODE is set, but a job may unset it).
OUTPUT_EXCLUDE = ("__pycache__/", "*.pyc")


@dataclass
class JobSpec:
    """What to run and how: everything that decides the bits, plus presentation."""

    project: Path
    script: str  # relative to the project
    args: list[str]
    image_id: str
    image_ref: str | None
    image_digests: list[str]
    seed: int
    determinism: str
    threads: int
    cpu_profile: str
    gpus: str = "none"  # all | none | N | device=ID,... (envkit.run.gpus)
    mounts: list[Mount] = field(default_factory=list)
    trace: str = "off"  # what the job traces: off | auto | N, and more (envkit.run.tracing)
    extra_env: dict[str, str] = field(default_factory=dict)
    network: str = "none"
    lock: LockInfo | None = None
    command: list[str] = field(default_factory=list)
    replay_of: str | None = None
    platform_mismatch: bool = False
    build_s: float | None = None
    expected_inputs: list[ManifestEntry] | None = None  # replay: inputs must hash to these
    code_source: Path | None = None  # replay: the recorded snapshot instead of the project folder
    lock_text: str | None = None  # the lockfile's text, kept beside the record
    memory: str | None = None  # container memory limit (docker syntax, e.g. 4g)
    notes: list[str] = field(default_factory=list)  # carried into the record (replay: how the image was had)
    pin_for: list[str] = field(default_factory=list)  # a pin run: the two runs whose parting it reruns to pin down
    user: str | None = None  # uid:gid inside the container; default: the invoking user, or JOB_UID when it is root
    argv: list[str] | None = None  # `envkit run -- COMMAND ARGS`: run this instead of `python SCRIPT ARGS`
    upstream: list[UpstreamInput] = field(default_factory=list)  # --input: earlier runs' outputs (envkit.run.inputs)
    ignore: list[str] = field(default_factory=list)  # gitignore patterns left out of the snapshot (project config)
    shm_size: str | None = None  # /dev/shm (docker syntax); envkit.run.container picks the default
    ipc: str | None = None  # private | shareable | host
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    env_file: str | None = None  # where some of extra_env came from (recorded; never snapshotted)
    cuda: str | None = None  # the CUDA version the image needs (checked against the driver before a GPU job)
    sweep: dict[str, Any] | None = None  # {"id", "index"}: the run is one seed of a sweep (envkit.sweep)
    scheduler: dict[str, str] | None = None  # a batch scheduler's ids for the record (Slurm job, task, node)

    @property
    def container_argv(self) -> list[str]:
        return list(self.argv) if self.argv else ["python", self.script, *self.args]


@dataclass
class Sink:
    """Where the job's live output goes (the terminal by default; a test or --json run can silence it)."""

    stdout: BinaryIO | None = None
    stderr: BinaryIO | None = None


def job_environment(job: JobSpec, run_id: str) -> dict[str, str]:
    """The container's environment: seed and determinism for the bootstrap, the CPU profile with its pinned
    threads, where reports and outputs go; then the user's own variables."""
    env = {
        ENV_SEED: str(job.seed),
        "PYTHONHASHSEED": str(job.seed),
        ENV_DETERMINISM: job.determinism,
        ENV_THREADS: str(job.threads),
        ENV_RUN_ID: run_id,
        ENV_REPORT_DIR: CONTAINER_META,
        ENV_OUTPUT_DIR: CONTAINER_OUTPUT,
        ENV_CPU_PROFILE: job.cpu_profile,
        "HOME": "/tmp",
        # The job's uid has no passwd entry in the image: getpass.getuser() (torch Inductor's caches) reads these.
        "USER": "envkit",
        "LOGNAME": "envkit",
    }
    env.update(cpuprofile.profile_env(job.cpu_profile, job.threads))
    if job.gpus == "none":
        # Docker adds NVIDIA_VISIBLE_DEVICES only with a device request; without one, an image that sets it to "all"
        # still gets every GPU under a default nvidia runtime. "void" is what Docker itself sets for a request of 0.
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    env.update(trace_environment(job.trace, CONTAINER_META))
    env.update(job.extra_env)
    return env


def gpu_request(gpus: str) -> GpuRequest | None:
    """The engine's device request for a ``--gpus`` value (see :func:`envkit.run.gpus.gpu_request`)."""
    return job_gpus.gpu_request(gpus)


def hash_inputs(mounts: list[Mount], progress: Progress | None = None) -> list[ManifestEntry]:
    """Manifest entries of every mounted input, paths prefixed by their container target."""
    from envkit.hashing import sha256_file

    entries: list[ManifestEntry] = []
    for m in mounts:
        if m.source.is_file():
            advance = progress(f"hashing input {m.target}", m.source.stat().st_size) if progress else None
            entries.append(ManifestEntry(m.target, m.source.stat().st_size, sha256_file(m.source, advance)))
        else:
            advance = progress(f"hashing input {m.target}", 0) if progress else None
            entries += [ManifestEntry(f"{m.target}/{e.path}", e.size, e.sha256, e.link)
                        for e in manifest(m.source, on_progress=advance).entries]
    return sorted(entries, key=lambda e: e.path)


def check_inputs(recorded: list[ManifestEntry], current: list[ManifestEntry]) -> None:
    """Replay: the inputs must be the recorded ones exactly: none changed, none missing, none added."""
    now = {e.path: e for e in current}
    for e in recorded:
        got = now.get(e.path)
        if got is None:
            raise InputChangedError(f"input {e.path} is missing", hint="mount the same data as the original run")
        if got.sha256 != e.sha256 or got.link != e.link:
            raise InputChangedError(f"input {e.path} changed since the run (sha256 {got.sha256[:12]}..., "
                                    f"recorded {e.sha256[:12]}...)", hint="restore the original input")
    extra = sorted(set(now) - {e.path for e in recorded})
    if extra:
        raise InputChangedError(f"input {extra[0]} was not there when the run was made"
                                + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""),
                                hint="mount exactly the data of the original run")


def execute(engine: Engine, store: FileStore, job: JobSpec, sink: Sink | None = None,
            on_started: Callable[[str], None] | None = None,
            fingerprint: dict[str, Any] | None = None,
            before_final_write: Callable[[RunRecord], None] | None = None,
            on_warning: Callable[[str], None] | None = None,
            progress: Progress | None = None) -> RunRecord:
    """Run one job and return its final record (also written to the store).

    Args:
        sink: where the job's output is echoed (default: this process's stdout and stderr).
        on_started: called with the run id once the container has started.
        fingerprint: this host's fingerprint when the caller has it already (replay does); else taken here.
        before_final_write: called with the complete record just before its final write (replay adds its
            verdict there, so the record is written once more, not twice).
        on_warning: called with one line for what the user should know (files left out of the snapshot).
        progress: ``progress(label, total_bytes) -> advance(n)`` for the steps that read many bytes (inputs,
            snapshot, outputs); the job's own output starts after ``on_started``.

    Raises:
        JobError: the container could not be created or started (the record ends ``failed``).
        InputChangedError: replay inputs differ. StoreError: the record cannot be written.
    """
    from envkit.fingerprint import host_fingerprint

    t0 = time.monotonic()
    sink = sink or Sink(sys.stdout.buffer, sys.stderr.buffer)
    fingerprint = fingerprint or host_fingerprint(engine)
    host_gpus = fingerprint.get("gpus") or {}
    fingerprint = {**fingerprint, "gpus": job_gpus.job_section(host_gpus, job.gpus)}  # the job's GPUs, not the host's
    cpuprofile.require_baseline(job.cpu_profile, (fingerprint.get("host") or {}).get("cpu_flags"))
    inputs = sorted(hash_inputs(job.mounts, progress) + [e for u in job.upstream for e in u.entries],
                    key=lambda e: e.path)
    if job.expected_inputs is not None:
        check_inputs(job.expected_inputs, inputs)
    run_id = store.create_run()
    layout = store.layout(run_id)
    env = job_environment(job, run_id)
    record = RunRecord(
        run_id=run_id, command=job.command, script=job.script if job.argv is None else None, args=list(job.args),
        seed=job.seed, determinism=job.determinism, threads=job.threads, cpu_profile=job.cpu_profile,
        environment=env, argv=job.container_argv, upstream=[u.link for u in job.upstream],
        image=ImageInfo(id=job.image_id, ref=job.image_ref, digests=list(job.image_digests),
                        digest=job.image_digests[0] if job.image_digests else None),
        lock=job.lock, inputs=inputs, replay_of=job.replay_of, platform_mismatch=job.platform_mismatch,
        mounts=[{"source": str(m.source), "target": m.target} for m in job.mounts], trace=job.trace,
        memory=job.memory, notes=list(job.notes), network=job.network, host_pid=os.getpid(),
        host_pid_start=process_start(os.getpid()), gpus=job.gpus, shm_size=job.shm_size, ipc=job.ipc,
        ulimits={k: list(v) for k, v in job.ulimits.items()}, user_explicit=job.user is not None,
        env_file=job.env_file, pin_for=list(job.pin_for), sweep=job.sweep, scheduler=job.scheduler,
    )
    record.timings = Timings(build_s=job.build_s)
    user = job.user or (f"{JOB_UID}:{JOB_UID}" if os.getuid() == 0 else f"{os.getuid()}:{os.getgid()}")
    record.user = user
    work = _prepare(job, layout, store, record, on_warning, progress)
    input_mounts = [*job.mounts, *[u.mount for u in job.upstream]]
    mount_points = make_mount_points(layout.work, input_mounts)
    if os.getuid() == 0 and user != "0:0" and not user.startswith("0:"):
        _hand_over(layout, user)
    record.fingerprint = Fingerprint(**fingerprint)
    record.started = utc_now()
    store.write(record)

    spec = ContainerSpec(
        image=job.image_id, command=job.container_argv, env=env, workdir=CONTAINER_WORKDIR,
        mounts=[Mount(layout.work, CONTAINER_WORKDIR, read_only=False),
                Mount(layout.meta, CONTAINER_META, read_only=False),
                Mount(layout.output, CONTAINER_OUTPUT, read_only=False),
                *[Mount(m.source, m.target, read_only=True) for m in input_mounts]],
        user=user, network=job.network, labels={LABEL_RUN: run_id}, gpus=gpu_request(job.gpus), memory=job.memory,
        cap_drop=("ALL",), security_opt=("no-new-privileges",), pids_limit=PIDS_LIMIT, hostname=JOB_HOSTNAME,
        shm_size=job.shm_size, ipc=job.ipc, ulimits=dict(job.ulimits),
    )
    status, exit_code, failure = "failed", None, None
    t_run = time.monotonic()
    container = None
    try:
        job_gpus.check(job.gpus, host_gpus, job.cuda, replay=job.replay_of is not None)  # before the engine tries
        container = engine.create(spec)
        try:
            status, exit_code = _run_container(container, layout, sink, on_started, run_id)
        except JobError as exc:
            fallback = without_ulimits(spec, exc.message)  # an engine that may not raise memlock: its own limits
            if fallback is None:
                raise
            container.remove()
            container = None
            record.notes.append(f"the engine refused the ulimits {', '.join(spec.ulimits)} ({exc.message}); the job "
                                "ran with the engine's own")
            record.ulimits = {}
            container = engine.create(fallback)
            status, exit_code = _run_container(container, layout, sink, on_started, run_id)
    except JobError as exc:
        failure = exc
        record.notes.append(f"the job's container could not run: {exc.message}")
    finally:
        if container is not None:
            container.remove()
        record.timings.run_s = round(time.monotonic() - t_run, 3)
        remove_mount_points(mount_points)
        _finish(engine, store, record, layout, work, env, status, exit_code, t0, job.build_s,
                before_final_write if failure is None else None, input_mounts, progress, probe=failure is None)
    if failure is not None:
        failure.run_id = record.run_id  # type: ignore[attr-defined] - `envkit run --json` names the failed run
        raise failure
    return record


def _prepare(job: JobSpec, layout: RunLayout, store: FileStore, record: RunRecord,
             on_warning: Callable[[str], None] | None, progress: Progress | None = None) -> Any:
    """The working copy (hashed), the pristine code copy, meta and output folders, git state and the lock."""
    # Copied and hashed once, into the working copy; its manifest keeps the copies' stats, so the outputs pass
    # rehashes only files the job touched. code/ is a plain copy kept pristine for export and replay.
    advance = progress("snapshot of the project", 0) if progress else None
    if job.code_source is not None:
        src = job.code_source
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_symlink() or p.is_file())
        code = snapshot(src, layout.work, files=files, on_progress=advance)
    else:
        # An --env-file inside the project holds the secrets the record redacts: never into the snapshot.
        listing = list_project(job.project, exclude_dirs=[store.root, *([job.env_file] if job.env_file else [])],
                               ignore=job.ignore)
        if listing.warning:
            record.notes.append(listing.warning)
            if on_warning is not None:
                on_warning(listing.warning)
        code = snapshot(job.project, layout.work, files=listing.files, on_progress=advance)
    shutil.copytree(layout.work, layout.code, symlinks=True)
    layout.meta.mkdir()
    layout.output.mkdir()
    gi = git_info(job.project) if job.code_source is None else None
    record.code = CodeInfo(sha256=code.sha256, git_commit=gi.commit if gi else None,
                           git_dirty=gi.dirty if gi else None, diff_sha256=gi.diff_sha256 if gi and gi.dirty else None,
                           files=code.entries)
    if gi and gi.dirty:
        layout.git_diff.write_bytes(gi.diff.encode("utf-8", "surrogateescape"))
    if job.lock_text is not None:
        layout.lock.write_text(job.lock_text, encoding="utf-8")  # export and rebuild need the lock itself
    return code


def _hand_over(layout: RunLayout, user: str) -> None:
    """Give the folders the job writes to the unprivileged user it runs as (envkit itself runs as root here)."""
    uid, _, gid = user.partition(":")
    uid_n, gid_n = int(uid), int(gid or uid)
    for top in (layout.work, layout.meta, layout.output):
        os.chown(top, uid_n, gid_n)
        for current, dirs, files in os.walk(top):
            for name in dirs + files:
                os.chown(os.path.join(current, name), uid_n, gid_n, follow_symlinks=False)


def _finish(engine: Engine, store: FileStore, record: RunRecord, layout: RunLayout, work: Any, env: dict[str, str],
            status: str, exit_code: int | None, t0: float, build_s: float | None,
            before_final_write: Callable[[RunRecord], None] | None, mounts: list[Mount] = (),
            progress: Progress | None = None, probe: bool = True) -> None:
    """Outputs, reports, the container's software (``probe``: not for a job that never ran) and the final status:
    the record's last write."""
    try:
        after = manifest(layout.work, exclude=OUTPUT_EXCLUDE, previous=work,
                         on_progress=progress("hashing outputs", 0) if progress else None)
        # A mount point in the working copy is the engine's placeholder for an input, never an output.
        outputs = [e for e in outputs_between(work, after) if not is_mount_point(e.path, mounts)]
        outputs += [ManifestEntry(output_name(e.path), e.size, e.sha256, e.link)
                    for e in manifest(layout.output).entries]
        record.outputs = sorted(outputs, key=lambda e: e.path)
    except EnvkitError as exc:  # an output the job made unreadable: the run still ends, with a note
        record.notes.append(f"outputs could not be hashed: {exc.message}")
        status = "failed" if status == "succeeded" else status
    record.metrics, metric_notes = read_metrics(layout, record.outputs)
    record.notes += metric_notes
    record.bootstrap = _bootstrap_reports(layout.meta)
    record.processes, record.world_size = count_processes(record.bootstrap)
    if probe:
        record.fingerprint.container = container_software(engine, store, record.image.id or "", env,
                                                          record.bootstrap, record.fingerprint.host, gpus=record.gpus,
                                                          job_gpus_section=record.fingerprint.gpus)
    record.status = status
    record.exit_code = exit_code
    record.finished = utc_now()
    record.timings.total_s = round(time.monotonic() - t0 + (build_s or 0), 3)
    if before_final_write is not None:
        before_final_write(record)
    store.write(record)


def _run_container(container: Container, layout: RunLayout, sink: Sink, on_started: Callable[[str], None] | None,
                   run_id: str) -> tuple[str, int | None]:
    """Start, stream, wait; SIGINT/SIGTERM stop the container. Returns (status, exit code)."""
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.set()
        threading.Thread(target=container.stop, daemon=True).start()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a closed terminal stops the job too
            previous[sig] = signal.signal(sig, on_signal)
    try:
        # Unbuffered: the logs hold everything the job printed even if envkit itself is killed.
        with open(layout.stdout_log, "wb", buffering=0) as out_log, open(layout.stderr_log, "wb", buffering=0) as err_log:
            output = container.start()
            if on_started:
                on_started(run_id)
            for out, err in output:
                if out:
                    out_log.write(out)
                    _echo(sink.stdout, out)
                if err:
                    err_log.write(err)
                    _echo(sink.stderr, err)
            result = container.wait()
        if result.oom_killed:
            return "oom", result.exit_code
        if interrupted.is_set():
            return "interrupted", result.exit_code
        return ("succeeded" if result.exit_code == 0 else "failed"), result.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _echo(stream: BinaryIO | None, data: bytes) -> None:
    if stream is not None:
        stream.write(data)
        stream.flush()


def _bootstrap_reports(meta_dir: Path) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(meta_dir.glob("bootstrap-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            reports.append({"file": path.name, "error": "unreadable report"})
    return sorted(reports, key=lambda r: (r.get("role") != "main", r.get("pid", 0)))


def container_software(engine: Engine, store: FileStore, image_id: str, env: dict[str, str],
                       reports: list[dict[str, Any]], host: dict[str, Any], gpus: str = "none",
                       job_gpus_section: dict[str, Any] | None = None) -> dict[str, Any]:
    """The software inside the container (Python, torch, CUDA, cuDNN, NCCL, numpy, MKL, oneDNN, ATen capability,
    threads) as the job saw it.

    The probe runs once per image, host CPU, GPUs and dispatch environment, and is cached in the store: it imports
    torch, which a job that never does should not pay for on every run. It gets the job's GPU request, so it sees
    the job's devices (CUDA, arch list, SM counts); the cache key holds the request and those devices. The main
    process's bootstrap report adds what the job itself had in effect.
    """
    if not image_id:  # nothing ran (a GPU check refused the job before any container)
        return {}
    dispatch = {k: v for k, v in sorted(env.items()) if not k.startswith("ENVKIT_") and k != "PYTHONHASHSEED"}
    cpu = [host.get("cpu_vendor"), host.get("cpu_model"), host.get("cpu_flags")]
    devices = [[d.get("uuid"), d.get("name"), d.get("sm_count")] for d in (job_gpus_section or {}).get("devices") or []]
    key_src = json.dumps({"image": image_id, "cpu": cpu, "env": dispatch,
                          **({"gpus": gpus, "devices": devices} if gpus != "none" else {})}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    section = store.read_probe(key)
    if section is None:
        section = probe_image(engine, image_id, dispatch, gpus)
        if section and "error" not in section:
            store.write_probe(key, section)
    main = next((r for r in reports if r.get("role") == "main"), None)
    if main is not None:
        keys = ("torch_version", "torch_git_version", "cpu_capability", "torch_num_threads",
                "torch_num_interop_threads", "deterministic_algorithms", "cudnn_deterministic", "libraries",
                "tf32_matmul", "tf32_cudnn")
        section = {**section, "job": {k: main.get(k) for k in keys}}
    return section


def run_tool(engine: Engine, image_id: str, tool: str, args: list[str], mounts: list[Mount],
             env: dict[str, str] | None = None, gpus: GpuRequest | None = None) -> dict[str, Any]:
    """Run one of the in-job helper scripts (``probe.py``, ``tensordiff.py``) in an image and parse its JSON line.

    The script is mounted read-only, so it works in any image with a Python, envkit-built or not.

    Returns:
        The JSON object it printed, or ``{"error": ...}`` (a helper must never fail a run or a verdict).
    """
    from envkit.resources import injob_file

    script = injob_file(tool)
    spec = ContainerSpec(image=image_id, command=["python", f"{CONTAINER_TOOLS}/{tool}", *args],
                         env={"PYTHONDONTWRITEBYTECODE": "1", **(env or {})}, network="none",
                         mounts=[Mount(script, f"{CONTAINER_TOOLS}/{tool}"), *mounts], labels={LABEL_RUN: "tool"},
                         gpus=gpus)
    try:
        return json.loads(engine.run_output(spec).decode())
    except (EnvkitError, ValueError, UnicodeDecodeError) as exc:
        return {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {str(exc)[:200]}"}


def probe_image(engine: Engine, image_id: str, env: dict[str, str], gpus: str = "none") -> dict[str, Any]:
    """The in-container software probe (envkit/injob/probe.py) run in ``image_id`` with the job's dispatch
    environment and GPU request."""
    return run_tool(engine, image_id, "probe.py", [], [], env, gpus=gpu_request(gpus))
