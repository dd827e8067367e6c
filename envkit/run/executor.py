"""The job in its container: snapshot, mounts, environment, live output, signals, outputs, the record.

One :func:`execute` call is one run. Its order is what makes a record trustworthy:

1. a run folder and a ``running`` record exist before the container starts (a crash leaves a record, not nothing);
2. the project snapshot (``code/``, pristine) and its working copy (``work/``, mounted read-write at /work);
3. inputs given with ``mount`` are hashed and mounted read-only;
4. the container runs with the seed, determinism level, thread count and CPU profile in its environment, no Docker
   socket, as the invoking user; its output streams live and into ``stdout.log`` / ``stderr.log``;
5. SIGINT / SIGTERM stop the container; whatever happens the container is removed;
6. outputs (files created or changed in ``work/`` and everything under ``$ENVKIT_OUTPUT_DIR``) are hashed, the
   bootstrap's per-process reports collected, and the final record written atomically.
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
from typing import TYPE_CHECKING, Any, BinaryIO

from envkit import cpuprofile
from envkit.engine import translated
from envkit.errors import InputChangedError, JobError, ScriptNotFoundError
from envkit.run.snapshot import ManifestEntry, diff_manifests, git_info, manifest, snapshot
from envkit.settings import (
    CONTAINER_META,
    CONTAINER_OUTPUT,
    CONTAINER_WORKDIR,
    ENV_CPU_PROFILE,
    ENV_DETERMINISM,
    ENV_OUTPUT_DIR,
    ENV_REPORT_DIR,
    ENV_RUN_ID,
    ENV_SEED,
    ENV_THREADS,
    ENV_TRACE,
    ENV_TRACE_FILE,
)
from envkit.store.filestore import FileStore
from envkit.store.record import CodeInfo, Fingerprint, ImageInfo, LockInfo, RunRecord, Timings, utc_now

if TYPE_CHECKING:
    import docker

LABEL_RUN = "io.envkit.run"
LOCK_COPY = "lock.yaml"
OUTPUT_PREFIX = "$ENVKIT_OUTPUT_DIR/"
# Never outputs: bytecode caches a job's imports may leave (PYTHONDONTWRITEBYTECODE is set, but a job may unset it).
OUTPUT_EXCLUDE = ("__pycache__/", "*.pyc")


@dataclass
class Mount:
    source: Path
    target: str

    @classmethod
    def parse(cls, text: str) -> Mount:
        src, sep, dst = text.partition(":")
        if not sep or not src or not dst.startswith("/"):
            raise JobError(f"--mount {text!r} is not SRC:DST with an absolute DST",
                           hint="e.g. --mount ./data:/data (mounted read-only, hashed as inputs)")
        path = Path(src).expanduser().resolve()
        if not path.exists():
            raise JobError(f"--mount source {src} does not exist")
        if dst.rstrip("/") in (CONTAINER_WORKDIR, CONTAINER_META, CONTAINER_OUTPUT, "", "/"):
            raise JobError(f"--mount target {dst} is reserved by envkit")
        return cls(path, dst.rstrip("/"))


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
    gpus: str = "none"  # all | none | N
    mounts: list[Mount] = field(default_factory=list)
    trace: str = "off"  # off | auto | N (optimizer steps between parameter digests)
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


@dataclass
class Sink:
    """Where the job's live output goes (the terminal by default; a test or --json run can silence it)."""

    stdout: BinaryIO | None = None
    stderr: BinaryIO | None = None


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


def job_environment(job: JobSpec, run_id: str) -> dict[str, str]:
    """The container's environment: seed and determinism for the bootstrap, pinned threads, the CPU profile."""
    env = {
        ENV_SEED: str(job.seed),
        "PYTHONHASHSEED": str(job.seed),
        ENV_DETERMINISM: job.determinism,
        ENV_THREADS: str(job.threads),
        "OMP_NUM_THREADS": str(job.threads),
        "MKL_NUM_THREADS": str(job.threads),
        "OPENBLAS_NUM_THREADS": str(job.threads),
        ENV_RUN_ID: run_id,
        ENV_REPORT_DIR: CONTAINER_META,
        ENV_OUTPUT_DIR: CONTAINER_OUTPUT,
        ENV_CPU_PROFILE: job.cpu_profile,
        "HOME": "/tmp",
    }
    env.update(cpuprofile.profile_env(job.cpu_profile, job.threads))
    if job.trace != "off":
        env[ENV_TRACE] = job.trace
        env[ENV_TRACE_FILE] = f"{CONTAINER_META}/trace.jsonl"
    env.update(job.extra_env)
    return env


def _device_requests(gpus: str) -> list[Any]:
    import docker.types

    if gpus == "none":
        return []
    count = -1 if gpus == "all" else int(gpus)
    return [docker.types.DeviceRequest(count=count, capabilities=[["gpu"]])]


def hash_inputs(mounts: list[Mount]) -> list[ManifestEntry]:
    """Manifest entries of every mounted input, paths prefixed by their container target."""
    from envkit.hashing import sha256_file

    entries: list[ManifestEntry] = []
    for m in mounts:
        if m.source.is_file():
            entries.append(ManifestEntry(m.target, m.source.stat().st_size, sha256_file(m.source)))
        else:
            entries += [ManifestEntry(f"{m.target}/{e.path}", e.size, e.sha256, e.link)
                        for e in manifest(m.source).entries]
    return sorted(entries, key=lambda e: e.path)


def check_inputs(recorded: list[ManifestEntry], current: list[ManifestEntry]) -> None:
    """Replay: refuse when an input's content differs from the record, naming the file."""
    now = {e.path: e for e in current}
    for e in recorded:
        got = now.get(e.path)
        if got is None:
            raise InputChangedError(f"input {e.path} is missing", hint="mount the same data as the original run")
        if got.sha256 != e.sha256:
            raise InputChangedError(f"input {e.path} changed since the run (sha256 {got.sha256[:12]}..., "
                                    f"recorded {e.sha256[:12]}...)", hint="restore the original input")


def execute(client: docker.DockerClient, store: FileStore, job: JobSpec, sink: Sink | None = None,
            on_started: Callable[[str], None] | None = None) -> RunRecord:
    """Run one job and return its final record (also written to the store).

    Raises:
        JobError: the container could not be created or started. InputChangedError: replay inputs differ.
        StoreError: the record cannot be written.
    """
    from envkit.fingerprint import host_fingerprint

    t0 = time.monotonic()
    sink = sink or Sink(sys.stdout.buffer, sys.stderr.buffer)
    fingerprint = host_fingerprint(client)
    cpuprofile.require_baseline(job.cpu_profile, (fingerprint.get("host") or {}).get("cpu_flags"))
    inputs = hash_inputs(job.mounts)
    if job.expected_inputs is not None:
        check_inputs(job.expected_inputs, inputs)
    run_id = store.create_run()
    run_dir = store.run_dir(run_id)
    env = job_environment(job, run_id)
    record = RunRecord(
        run_id=run_id, command=job.command, script=job.script, args=list(job.args), seed=job.seed,
        determinism=job.determinism, threads=job.threads, cpu_profile=job.cpu_profile,
        environment=env,
        image=ImageInfo(id=job.image_id, ref=job.image_ref, digests=list(job.image_digests),
                        digest=job.image_digests[0] if job.image_digests else None),
        lock=job.lock, inputs=inputs, replay_of=job.replay_of, platform_mismatch=job.platform_mismatch,
        mounts=[{"source": str(m.source), "target": m.target} for m in job.mounts], trace=job.trace,
        memory=job.memory,
    )
    record.timings = Timings(build_s=job.build_s)
    code_dir, work_dir, meta_dir, out_dir = (run_dir / n for n in ("code", "work", "meta", "output"))
    # Copied and hashed once, into the working copy; its manifest keeps the copies' stats, so the outputs pass
    # rehashes only files the job touched. code/ is a plain copy kept pristine for export and replay.
    if job.code_source is not None:
        src = job.code_source
        files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_symlink() or p.is_file())
        code = snapshot(src, work_dir, files=files)
    else:
        code = snapshot(job.project, work_dir, exclude_dirs=[store.root])
    shutil.copytree(work_dir, code_dir, symlinks=True)
    work = code
    meta_dir.mkdir()  # the job runs as the invoking user, who owns these folders: no mode change needed
    out_dir.mkdir()
    gi = git_info(job.project) if job.code_source is None else None
    record.code = CodeInfo(sha256=code.sha256, git_commit=gi.commit if gi else None,
                           git_dirty=gi.dirty if gi else None, diff_sha256=gi.diff_sha256 if gi and gi.dirty else None,
                           files=code.entries)
    if gi and gi.dirty:
        (run_dir / "git.diff").write_bytes(gi.diff.encode("utf-8", "surrogateescape"))
    if job.lock_text is not None:
        (run_dir / LOCK_COPY).write_text(job.lock_text, encoding="utf-8")  # export and rebuild need the lock itself
    record.fingerprint = Fingerprint(**fingerprint)
    record.started = utc_now()
    store.write(record)

    volumes = {str(work_dir): {"bind": CONTAINER_WORKDIR, "mode": "rw"},
               str(meta_dir): {"bind": CONTAINER_META, "mode": "rw"},
               str(out_dir): {"bind": CONTAINER_OUTPUT, "mode": "rw"}}
    for m in job.mounts:
        volumes[str(m.source)] = {"bind": m.target, "mode": "ro"}
    container = None
    status, exit_code = "failed", None
    t_run = time.monotonic()
    try:
        with translated("creating the job's container", image=job.image_id):
            try:
                container = client.containers.create(
                    job.image_id, command=["python", job.script, *job.args], working_dir=CONTAINER_WORKDIR,
                    environment=env, volumes=volumes, user=f"{os.getuid()}:{os.getgid()}",
                    network_mode=job.network, labels={LABEL_RUN: run_id}, device_requests=_device_requests(job.gpus),
                    stdin_open=False, tty=False, detach=True, mem_limit=job.memory,
                    memswap_limit=job.memory,
                )
            except Exception as exc:  # noqa: BLE001 - re-raised as a JobError with the engine's reason
                import docker.errors

                if isinstance(exc, docker.errors.APIError) and job.gpus != "none":
                    raise JobError(f"cannot give the job GPUs ({exc.explanation})",
                                   hint="install the NVIDIA container toolkit, or run with --gpus none") from exc
                raise
        status, exit_code = _run_container(client, container, run_dir, sink, on_started, run_id)
    finally:
        if container is not None:
            _remove(container)
        record.timings.run_s = round(time.monotonic() - t_run, 3)
    after = manifest(work_dir, exclude=OUTPUT_EXCLUDE, previous=work)
    outputs = diff_manifests(work, after).outputs
    outputs += [ManifestEntry(OUTPUT_PREFIX + e.path, e.size, e.sha256, e.link) for e in manifest(out_dir).entries]
    record.outputs = sorted(outputs, key=lambda e: e.path)
    record.bootstrap = _bootstrap_reports(meta_dir)
    record.fingerprint.container = container_software(client, store, job.image_id, env, record.bootstrap,
                                                      record.fingerprint.host)
    record.status = status
    record.exit_code = exit_code
    record.finished = utc_now()
    record.timings.total_s = round(time.monotonic() - t0 + (job.build_s or 0), 3)
    store.write(record)
    return record


def _run_container(client: docker.DockerClient, container: Any, run_dir: Path, sink: Sink,
                   on_started: Callable[[str], None] | None, run_id: str) -> tuple[str, int | None]:
    """Start, stream, wait; SIGINT/SIGTERM stop the container. Returns (status, exit code)."""
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted.set()
        threading.Thread(target=_stop, args=(container,), daemon=True).start()

    previous = {}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        with open(run_dir / "stdout.log", "wb") as out_log, open(run_dir / "stderr.log", "wb") as err_log:
            with translated("starting the job's container"):
                stream = client.api.attach(container.id, stdout=True, stderr=True, stream=True, logs=True,
                                           demux=True)
                container.start()
            if on_started:
                on_started(run_id)
            try:
                for out, err in stream:
                    if out:
                        out_log.write(out)
                        _echo(sink.stdout, out)
                    if err:
                        err_log.write(err)
                        _echo(sink.stderr, err)
            except Exception:  # noqa: BLE001 - a broken attach stream (stop, engine hiccup) ends the streaming only
                pass
            with translated("waiting for the job"):
                result = container.wait()
                container.reload()
        exit_code = int(result.get("StatusCode", -1))
        if container.attrs.get("State", {}).get("OOMKilled"):
            return "oom", exit_code
        if interrupted.is_set():
            return "interrupted", exit_code
        return ("succeeded" if exit_code == 0 else "failed"), exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _echo(stream: BinaryIO | None, data: bytes) -> None:
    if stream is not None:
        stream.write(data)
        stream.flush()


def _stop(container: Any) -> None:
    try:
        container.stop(timeout=5)
    except Exception:  # noqa: BLE001 - it may have exited already
        pass


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:  # noqa: BLE001 - already gone, or the engine is gone; nothing else to do
        pass


def _bootstrap_reports(meta_dir: Path) -> list[dict[str, Any]]:
    reports = []
    for path in sorted(meta_dir.glob("bootstrap-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            reports.append({"file": path.name, "error": "unreadable report"})
    return sorted(reports, key=lambda r: (r.get("role") != "main", r.get("pid", 0)))


def container_software(client: docker.DockerClient, store: FileStore, image_id: str, env: dict[str, str],
                       reports: list[dict[str, Any]], host: dict[str, Any]) -> dict[str, Any]:
    """The software inside the container (Python, torch, CUDA, cuDNN, NCCL, numpy, MKL, oneDNN, ATen capability,
    threads) as the job saw it.

    The probe runs once per image, host CPU and dispatch environment, and is cached in the store: it imports torch,
    which a job that never does should not pay for on every run. The main process's bootstrap report adds what the
    job itself had in effect.
    """
    dispatch = {k: v for k, v in sorted(env.items()) if not k.startswith("ENVKIT_") and k != "PYTHONHASHSEED"}
    cpu = [host.get("cpu_vendor"), host.get("cpu_model"), host.get("cpu_flags")]
    key_src = json.dumps({"image": image_id, "cpu": cpu, "env": dispatch}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    cache = store.root / "probes" / f"{key}.json"
    section: dict[str, Any]
    try:
        section = json.loads(cache.read_text())
    except (OSError, ValueError):
        section = _probe(client, image_id, dispatch)
        if section:
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(section, sort_keys=True))
                os.replace(tmp, cache)
            except OSError:
                pass
    main = next((r for r in reports if r.get("role") == "main"), None)
    if main is not None:
        keys = ("torch_version", "torch_git_version", "cpu_capability", "torch_num_threads",
                "torch_num_interop_threads", "deterministic_algorithms", "cudnn_deterministic", "libraries")
        section = {**section, "job": {k: main.get(k) for k in keys}}
    return section


def _probe(client: docker.DockerClient, image_id: str, env: dict[str, str]) -> dict[str, Any]:
    from envkit.resources import package_file

    script = package_file("run", "probe.py")
    if script is None:
        return {}
    try:
        out = client.containers.run(
            image_id, ["python", "/envkit/probe.py"], environment=env, network_mode="none", remove=True,
            volumes={str(script): {"bind": "/envkit/probe.py", "mode": "ro"}}, stdout=True, stderr=False,
            labels={LABEL_RUN: "probe"},
        )
        return json.loads(out.decode())
    except Exception as exc:  # noqa: BLE001 - a probe must never fail a run; its failure is recorded
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
