"""record -> rerun -> verdict.

:func:`replay` checks the platform first (nothing runs on a host whose numerics would differ unless forced), then gets
the very image the run used (by image ID; else pulled by registry digest; else, only when asked, rebuilt from the
recorded lockfile), reruns the recorded code snapshot on the same inputs with the same seed, environment, thread count
and determinism level, compares every output byte for byte, and returns a :class:`ReplayResult`. The replay's record
is written by the run itself, verdict included: nothing is written after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit import _forward_calls, cpuprofile
from envkit.engine import Engine, Mount
from envkit.errors import (
    EXIT_DIVERGED,
    EXIT_FAILED,
    EXIT_IDENTICAL,
    EXIT_UNVERIFIED,
    GpuError,
    ImageNotFoundError,
    JobError,
    PlatformMismatchError,
    RegistryError,
)
from envkit.fingerprint import FieldDiff, compare_fingerprints
from envkit.manifest import compare
from envkit.run import gpus as job_gpus
from envkit.run.container import read_env_file
from envkit.run.executor import JobSpec, Sink, container_software, execute, job_environment, run_tool
from envkit.run.inputs import Progress, UpstreamInput, resolve_recorded
from envkit.run.mounts import replay_mounts
from envkit.stdoutcompare import compare_stdout
from envkit.store.bundle import is_imported
from envkit.store.filestore import FileStore
from envkit.store.layout import RunLayout
from envkit.store.record import RunRecord
from envkit.store.redact import is_redacted

IDENTICAL, DIVERGED, FAILED = "IDENTICAL", "DIVERGED", "FAILED"
UNVERIFIED = "UNVERIFIED"  # nothing to compare: no output file, and no stdout line left after masking
VERDICT_EXIT = {IDENTICAL: EXIT_IDENTICAL, DIVERGED: EXIT_DIVERGED, FAILED: EXIT_FAILED, UNVERIFIED: EXIT_UNVERIFIED}
TENSOR_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".npy")


@dataclass
class FileDiff:
    path: str
    change: str  # differs | missing | extra
    original_sha256: str | None = None
    replay_sha256: str | None = None
    tensors: list[dict[str, Any]] | None = None
    tensor_error: str | None = None


@dataclass
class Verdict:
    kind: str
    files: list[FileDiff] = field(default_factory=list)
    stdout_differs: bool = False
    stdout_first_line: int | None = None
    exit_code: int | None = None
    original_exit_code: int | None = None
    divergence: dict[str, Any] | None = None  # first divergent optimizer step, from the step traces
    files_compared: int = 0  # output files of the original run compared
    stdout_is_output: bool = False  # no output file: stdout decided the verdict
    stdout: dict[str, Any] | None = None  # envkit.stdoutcompare.StdoutComparison.to_dict()
    ignore_lines: list[str] = field(default_factory=list)  # the masks applied to stdout
    image: dict[str, Any] | None = None  # --rebuild: {"recorded", "rebuilt", "same"}: was it the recorded image?

    @property
    def exit(self) -> int:
        return VERDICT_EXIT[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "exit_code": self.exit_code, "original_exit_code": self.original_exit_code,
            "stdout_differs": self.stdout_differs, "stdout_first_line": self.stdout_first_line,
            "divergence": self.divergence, "files_compared": self.files_compared,
            "stdout_is_output": self.stdout_is_output, "stdout": self.stdout, "ignore_lines": self.ignore_lines,
            "files": [{k: v for k, v in f.__dict__.items() if v is not None} for f in self.files],
            **({"image": self.image} if self.image is not None else {}),
        }


@dataclass
class ReplayResult:
    """What a replay gives: the replay's record (verdict included), the verdict, and how it came about."""

    original: RunRecord
    record: RunRecord
    verdict: Verdict
    forced: list[FieldDiff] = field(default_factory=list)  # numerics-changing differences replayed past (--force)
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def exit_code(self) -> int:
        return self.verdict.exit


def replay(engine: Engine, store: FileStore, run_id: str, *, force: bool = False, rebuild: bool = False,
           mount_overrides: dict[str, Path] | None = None, sink: Sink | None = None,
           on_forced: Callable[[list[FieldDiff]], None] | None = None, ignore_lines: Sequence[str] = (),
           upstream_sources: dict[str, str] | None = None, progress: Progress | None = None,
           gpus: str | None = None,
           after_judge: Callable[[RunRecord, RunRecord, Verdict, list[FieldDiff]], None] | None = None,
           ) -> ReplayResult:
    """Replay a recorded run on this host and judge it.

    Args:
        force: replay even where the platform differs in numerics (the replay is marked).
        rebuild: if the image cannot be had, rebuild it from the recorded lockfile.
        mount_overrides: container path -> host path, for inputs that now live elsewhere.
        on_forced: called with the numerics-changing differences before a forced replay runs.
        ignore_lines: regular expressions of stdout lines to leave out of the comparison (timings).
        upstream_sources: upstream run id -> the run to take that input from instead (its replay, under
            ``envkit replay --upstream``); either way the input must hash to the recorded sha256.
        progress: ``progress(label, total_bytes) -> advance`` for pulls, inputs, snapshot and outputs.
        gpus: replay with this GPU request instead of the recorded one (``--gpus``).
        after_judge: called with the original, the replay's record, the verdict and the forced differences once the
            verdict is known, before the record's final write; it may add to the verdict (``envkit.pin`` pins the
            exact step there).

    Raises:
        GpuError: this host cannot give the job its GPUs (fewer than the run used, or a driver too old for the
            image's CUDA), checked before anything is pulled or run.
        PlatformMismatchError: numerics-changing differences and no ``force`` (they are in ``.differences``).
        ImageNotFoundError, RegistryError: the image cannot be had. InputChangedError: an input changed.
        UpstreamError: an input's upstream run is not in this store (and no ``--mount`` gives it).
    """
    from envkit.fingerprint import host_fingerprint

    original = store.read(run_id)
    layout = store.layout(run_id)
    # Inputs first: an imported run's inputs must be given here, before anything is pulled or run.
    imported = is_imported(layout)
    overrides = dict(mount_overrides or {})
    upstream = replay_upstream(store, original, upstream_sources or {}, overrides, progress)
    mounts = replay_mounts(original.mounts, overrides, imported=imported)
    requested = replay_gpus(original, gpus)
    now = host_fingerprint(engine)
    lock_text = layout.lock.read_text(encoding="utf-8") if layout.lock.is_file() else None
    used = original.fingerprint.gpus.get("count") if requested == original.gpus else None
    job_gpus.check(requested, now.get("gpus") or {}, job_gpus.lock_text_cuda(lock_text) if lock_text else None,
                   replay=True, used=used if isinstance(used, int) else None)
    forced = _check(host_differences(original, now, requested), force)
    image_id, notes = acquire_image(engine, original, layout, rebuild, progress)
    cuda = job_gpus.image_cuda(engine, image_id, lock_text)
    job_gpus.check(requested, now.get("gpus") or {}, cuda, replay=True)  # the image's own label, now it is here
    devices = job_gpus.job_section(now.get("gpus") or {}, requested)
    forced += _check(container_differences(engine, store, original, image_id, now.get("host") or {}, requested,
                                           devices), force)
    if forced and on_forced is not None:
        on_forced(forced)
    job = replay_job(original, layout, image_id, bool(forced), mounts, gpus=requested)
    job.upstream = upstream
    job.cuda = cuda
    if imported:
        job.user = None  # a foreign record's --user (root, say) is not taken: envkit's own rule applies
    if requested != original.gpus:
        notes.append(f"replayed with --gpus {requested}; the run used --gpus {original.gpus}")
    # A foreign record's --env-file names another host's path: never read it.
    restored, lost = restore_secrets(original) if not imported else ({}, unrestorable_environment(original))
    job.extra_env.update(restored)
    if restored:
        notes.append(f"the redacted variable(s) {', '.join(restored)} were read again from {original.env_file}")
    if lost:
        notes.append(f"the replay cannot restore the redacted variable(s) {', '.join(lost)}: the job sees them unset")
    if any(is_redacted(a) for a in original.job_argv):
        notes.append("the replay cannot restore the arguments that were redacted: it passes "
                     "<redacted> in their place")
    job.notes = list(notes)
    verdict: list[Verdict] = []

    def judge_before_final_write(replay_record: RunRecord) -> None:
        verdict.append(judge(engine, store, original, replay_record, ignore_lines))
        if notes and notes[0].startswith(REBUILT):  # the verdict says on which image it was reached
            verdict[0].image = {"recorded": original.image.id, "rebuilt": image_id,
                                "same": image_id == original.image.id}
        if after_judge is not None:
            after_judge(original, replay_record, verdict[0], forced)
        replay_record.verdict = verdict[0].to_dict()

    record = execute(engine, store, job, sink=sink, fingerprint=now, before_final_write=judge_before_final_write,
                     progress=progress)
    return ReplayResult(original=original, record=record, verdict=verdict[0], forced=forced, notes=notes)


def _check(diffs: list[FieldDiff], force: bool) -> list[FieldDiff]:
    bad = [d for d in diffs if d.changes_numerics]
    if bad and not force:
        raise PlatformMismatchError(
            f"this host differs from the recorded one in {len(bad)} field{'s' if len(bad) > 1 else ''} that "
            f"change numerics ({', '.join(d.path for d in bad[:3])}{', ...' if len(bad) > 3 else ''})",
            differences=bad)
    return bad


# --- 1. the platform ---------------------------------------------------------------------------------------------
def host_differences(record: RunRecord, now: dict[str, Any], gpus: str | None = None) -> list[FieldDiff]:
    """Every host, engine and GPU field that differs between the recorded host and this one (``now``, from
    :func:`envkit.fingerprint.host_fingerprint`).

    The GPU side is the job's: this host's GPUs cut down to what the request (``gpus``, default the recorded one)
    gives, against the devices the run was given. A ``--gpus none`` run and its replay both record no GPU, so GPUs
    on either host make no difference.
    """
    cpuprofile.require_baseline(record.cpu_profile, (now.get("host") or {}).get("cpu_flags"))
    recorded = {k: getattr(record.fingerprint, k) for k in ("host", "engine", "gpus")}
    current = {k: now.get(k) for k in ("host", "engine")}
    current["gpus"] = job_gpus.job_section(now.get("gpus") or {}, gpus or record.gpus)
    return compare_fingerprints(recorded, current, cpu_profile=record.cpu_profile)


def container_differences(engine: Engine, store: FileStore, record: RunRecord, image_id: str,
                          host: dict[str, Any], gpus: str | None = None,
                          devices: dict[str, Any] | None = None) -> list[FieldDiff]:
    """The software inside the container as probed on this host against the record.

    Same image, yet ATen's CPU capability in effect depends on the host CPU, and what CUDA sees on the GPUs, so it
    is probed here too, with the replay's GPU request (``gpus``, default the recorded one) on this host's devices
    (``devices``: :func:`envkit.run.gpus.job_section` of this host).
    """
    if not record.fingerprint.container:
        return []
    gpus = gpus or record.gpus
    env = replay_environment(record, gpus)
    probe = container_software(engine, store, image_id, env, [], host, gpus=gpus, job_gpus_section=devices)
    recorded = {k: v for k, v in record.fingerprint.container.items() if k != "job"}
    current = {k: v for k, v in probe.items() if k != "job"}
    return compare_fingerprints({"container": recorded}, {"container": current}, cpu_profile=record.cpu_profile)


# --- 2. the image ------------------------------------------------------------------------------------------------
def acquire_image(engine: Engine, record: RunRecord, layout: RunLayout, rebuild: bool,
                  progress: Progress | None = None) -> tuple[str, list[str]]:
    """The recorded image on this engine: present by ID, else pulled by digest, else (if asked) rebuilt.

    Returns:
        The image ID to run and notes for the replay's record.

    Raises:
        ImageNotFoundError: the image cannot be had (with what to do).
        RegistryError: the pull failed or the pulled image is not the recorded one.
    """
    wanted = record.image.id
    if wanted and engine.find_image(wanted) is not None:
        return wanted, []
    failures = []
    for ref in record_digests(record):  # the image may have been pushed to several registries; any one will do
        if progress is not None:
            progress(f"pulling {ref}", 0)
        try:
            pulled = engine.pull(ref)
        except RegistryError as exc:
            failures.append(exc)
            continue
        if wanted and pulled != wanted:
            raise RegistryError(f"{ref} pulled as image {pulled[:19]}, the run used {wanted[:19]}",
                                hint="the registry holds another image under that name; do not trust it")
        return pulled, [f"image pulled by digest {ref}"]
    if failures and not rebuild:
        raise failures[-1] if len(failures) == 1 else RegistryError(
            f"none of the image's {len(failures)} registry digests could be pulled ({failures[-1].message})",
            hint="check that one of the registries is reachable from the Docker engine")
    if rebuild:
        return _rebuild(engine, record, layout, progress)
    raise ImageNotFoundError(
        f"image {wanted[:19] if wanted else '?'} of run {record.run_id} is not on this engine and has no registry digest",
        hint="import a bundle made with `envkit export RUN --with-image`, push the image with `envkit build --push`, "
             "or pass --rebuild to rebuild it from the recorded lockfile (the replay says whether it is the same image)",
    )


REBUILT = "image rebuilt from the recorded lockfile"


def _rebuild(engine: Engine, record: RunRecord, layout: RunLayout,
             progress: Progress | None = None) -> tuple[str, list[str]]:
    """The recorded lockfile built again; envkit's images are reproducible, so it is the recorded image when the
    lock, envkit's in-image files and version are the same (the note says which)."""
    from envkit.image.builder import build_image
    from envkit.lock.model import load_lockfile

    if not layout.lock.is_file():
        raise ImageNotFoundError(f"run {record.run_id} kept no lockfile to rebuild its image from")
    on_step = (lambda step: progress(f"rebuilding the image: {step}", 0)) if progress else None
    result = build_image(engine, load_lockfile(layout.lock), cpu_profile=record.cpu_profile, progress=progress,
                         on_step=on_step)
    recorded = record.image.id or "?"
    if result.image_id == recorded:
        return result.image_id, [f"{REBUILT}: {result.image_id} is the recorded image (the replay ran on it)"]
    return result.image_id, [f"{REBUILT}: {result.image_id} differs from the recorded {recorded} (the replay ran on "
                             "another image)"]


def record_digests(record: RunRecord) -> list[str]:
    return list(dict.fromkeys(([record.image.digest] if record.image.digest else []) + record.image.digests))


# --- 3. the rerun ------------------------------------------------------------------------------------------------
def replay_gpus(record: RunRecord, override: str | None) -> str:
    """The GPU request of a replay: ``override`` (``replay --gpus``), else the recorded one.

    Raises:
        GpuError: ``override`` is not a request.
    """
    if override is None:
        return record.gpus
    try:
        return job_gpus.parse_gpus(override)
    except ValueError as exc:
        raise GpuError(f"--gpus {exc}") from None


def replay_environment(record: RunRecord, gpus: str) -> dict[str, str]:
    """The recorded environment as the replay's job sees it: envkit's variables for ``gpus`` (a CPU replay of a GPU
    run hides the GPUs, a GPU replay of a CPU run does not)."""
    env = dict(record.environment)
    env.pop("NVIDIA_VISIBLE_DEVICES", None)
    if gpus == "none":
        env["NVIDIA_VISIBLE_DEVICES"] = "void"
    return env


def replay_job(record: RunRecord, layout: RunLayout, image_id: str, mismatch: bool,
               mounts: list[Mount] | None = None, gpus: str | None = None) -> JobSpec:
    """The original run's job, on its recorded code snapshot and inputs (``mounts``: see
    :func:`envkit.run.mounts.replay_mounts`), with its recorded container settings and GPU request (``gpus``
    overrides it)."""
    gpus = gpus or record.gpus
    ulimits = {k: (int(v[0]), int(v[1])) for k, v in record.ulimits.items() if len(v) == 2}
    return JobSpec(
        project=layout.code, script=record.script or "", args=list(record.args), image_id=image_id,
        image_ref=record.image.ref, image_digests=record_digests(record), seed=int(record.seed or 0),
        determinism=record.determinism, threads=record.threads, cpu_profile=record.cpu_profile, mounts=list(mounts or []),
        trace=record.trace, lock=record.lock, command=[], replay_of=record.run_id, platform_mismatch=mismatch,
        expected_inputs=list(record.inputs), code_source=layout.code,
        argv=list(record.argv) if record.script is None and record.argv else None,
        extra_env=user_environment(record), memory=record.memory, network=record.network,
        lock_text=layout.lock.read_text() if layout.lock.is_file() else None,
        gpus=gpus, shm_size=record.shm_size, ipc=record.ipc, ulimits=ulimits, env_file=record.env_file,
        user=_replay_user(record),
    )


def replay_upstream(store: FileStore, record: RunRecord, sources: dict[str, str], overrides: dict[str, Path],
                    progress: Progress | None = None) -> list[UpstreamInput]:
    """The recorded ``--input`` links again, each checked to hash as recorded (see
    :func:`envkit.run.inputs.resolve_recorded`); an override for a link's target is taken out of ``overrides``."""
    return [resolve_recorded(store, link, sources.get(link.run_id), overrides.pop(link.target, None), progress)
            for link in record.upstream]


def _replay_user(record: RunRecord) -> str | None:
    """The recorded ``--user``; None (envkit's default rule) when the run had none, or when only root could hand
    this replay's folders to that uid."""
    import os

    if not record.user_explicit or not record.user:
        return None
    if os.getuid() != 0 and int(record.user.split(":")[0]) != os.getuid():
        return None
    return record.user


def restore_secrets(record: RunRecord) -> tuple[dict[str, str], list[str]]:
    """The redacted variables read again from the run's ``--env-file`` when it is still there, and the names still
    missing (the job sees them unset)."""
    lost = unrestorable_environment(record)
    if not lost or not record.env_file:
        return {}, lost
    try:
        values = read_env_file(Path(record.env_file))
    except JobError:
        return {}, lost
    restored = {k: values[k] for k in lost if k in values}
    return restored, [k for k in lost if k not in restored]


def user_environment(record: RunRecord) -> dict[str, str]:
    """The variables the user added with --env (the rest envkit derives again from the record's options).

    Redacted values cannot be replayed; they are left out, and the job sees them unset.
    """
    stub = JobSpec(project=Path("."), script="", args=[], image_id="", image_ref=None, image_digests=[],
                   seed=int(record.seed or 0), determinism=record.determinism, threads=record.threads,
                   cpu_profile=record.cpu_profile, trace=record.trace, gpus=record.gpus)
    derived = job_environment(stub, record.run_id)
    return {k: v for k, v in record.environment.items() if k not in derived and not is_redacted(v)}


def unrestorable_environment(record: RunRecord) -> list[str]:
    """The variables of the record whose values were redacted (wholly or a URL's password): a replay leaves them
    unset. Its note and the CLI say which."""
    return [k for k, v in record.environment.items() if is_redacted(v)]


# --- 4. the verdict ----------------------------------------------------------------------------------------------
def judge(engine: Engine, store: FileStore, original: RunRecord, replay_record: RunRecord,
          ignore_lines: Sequence[str] = ()) -> Verdict:
    """IDENTICAL, DIVERGED (which files, which tensors, which step; or, for a run without output files, the first
    stdout line that differs), FAILED, or UNVERIFIED when there was nothing to compare."""
    verdict = Verdict(IDENTICAL, exit_code=replay_record.exit_code, original_exit_code=original.exit_code,
                      ignore_lines=list(ignore_lines), files_compared=len(original.outputs))
    a, b = store.layout(original.run_id), store.layout(replay_record.run_id)
    stdout = compare_stdout(a.stdout_log, b.stdout_log, ignore_lines)
    verdict.stdout, verdict.stdout_differs, verdict.stdout_first_line = stdout.to_dict(), stdout.differs, \
        stdout.first_line
    if replay_record.status != "succeeded" or replay_record.exit_code != original.exit_code:
        verdict.kind = FAILED
        return verdict
    for change in compare(original.outputs, replay_record.outputs):
        diff = FileDiff(change.path, change.kind, change.sha_a, change.sha_b)
        if change.kind == "differs" and change.path.lower().endswith(TENSOR_SUFFIXES):
            fa, fb = a.output_path(change.path), b.output_path(change.path)
            if fa.is_file() and fb.is_file():
                result = tensor_diff(engine, replay_record.image.id or "", fa, fb)
                diff.tensors, diff.tensor_error = result.get("tensors"), result.get("error")
        verdict.files.append(diff)
    if verdict.files:
        verdict.kind = DIVERGED
    elif not original.outputs:  # no output file: what the job printed is its output
        verdict.stdout_is_output = True
        verdict.kind = DIVERGED if stdout.differs else (UNVERIFIED if stdout.lines == 0 else IDENTICAL)
    verdict.divergence = _trace_divergence(a.root, b.root)
    return verdict


def tensor_diff(engine: Engine, image_id: str, a: Path, b: Path) -> dict[str, Any]:
    """Run tensordiff.py in the job's image (it has torch/numpy; the host may not)."""
    if not image_id:
        return {"error": "tensor comparison unavailable"}
    return run_tool(engine, image_id, "tensordiff.py", ["/cmp/a/" + a.name, "/cmp/b/" + b.name],
                    [Mount(a.resolve(), f"/cmp/a/{a.name}"), Mount(b.resolve(), f"/cmp/b/{b.name}")])


def _trace_divergence(a_dir: Path, b_dir: Path) -> dict[str, Any] | None:
    """The first divergent optimizer step when both runs kept step traces (see envkit.diff)."""
    from envkit.diff import first_divergence_in_runs
    from envkit.errors import TraceError

    try:
        return first_divergence_in_runs(a_dir, b_dir)
    except TraceError as exc:  # a trace problem must not hide the file-level verdict
        return {"error": exc.message}


_forward_calls(__name__)  # `envkit.replay(...)` stays the API's function once this module is loaded
