"""record -> rerun -> verdict.

A replay checks the platform first (nothing runs on a host whose numerics would differ unless forced), then gets the
very image the run used (by image ID; else pulled by registry digest; else, only when asked, rebuilt from the
recorded lockfile, which gives another image ID), reruns the recorded code snapshot on the same inputs with the same
seed, environment, thread count and determinism level, and compares every output byte for byte.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit import cpuprofile
from envkit.engine import translated
from envkit.errors import EXIT_DIVERGED, EXIT_FAILED, EXIT_IDENTICAL, ImageNotFoundError, RegistryError
from envkit.fingerprint import FieldDiff, compare_fingerprints
from envkit.run.executor import LOCK_COPY, OUTPUT_PREFIX, JobSpec, Mount, Sink, container_software, execute
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord

if TYPE_CHECKING:
    import docker

IDENTICAL, DIVERGED, FAILED = "IDENTICAL", "DIVERGED", "FAILED"
VERDICT_EXIT = {IDENTICAL: EXIT_IDENTICAL, DIVERGED: EXIT_DIVERGED, FAILED: EXIT_FAILED}
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

    @property
    def exit(self) -> int:
        return VERDICT_EXIT[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "exit_code": self.exit_code, "original_exit_code": self.original_exit_code,
            "stdout_differs": self.stdout_differs, "stdout_first_line": self.stdout_first_line,
            "divergence": self.divergence,
            "files": [{k: v for k, v in f.__dict__.items() if v is not None} for f in self.files],
        }


# --- 1. the platform ---------------------------------------------------------------------------------------------
def host_differences(record: RunRecord, now: dict[str, Any]) -> list[FieldDiff]:
    """Every host, engine and GPU field that differs between the recorded host and this one (``now``, from
    :func:`envkit.fingerprint.host_fingerprint`)."""
    cpuprofile.require_baseline(record.cpu_profile, (now.get("host") or {}).get("cpu_flags"))
    recorded = {k: getattr(record.fingerprint, k) for k in ("host", "engine", "gpus")}
    current = {k: now.get(k) for k in ("host", "engine", "gpus")}
    return compare_fingerprints(recorded, current, cpu_profile=record.cpu_profile,
                                vendor_changes_numerics=cpuprofile.vendor_changes_numerics(record.cpu_profile))


def container_differences(client: docker.DockerClient, store: FileStore, record: RunRecord, image_id: str,
                          host: dict[str, Any]) -> list[FieldDiff]:
    """The software inside the container as probed on this host against the record.

    Same image, yet ATen's CPU capability in effect depends on the host CPU, so it is probed here too.
    """
    if not record.fingerprint.container:
        return []
    probe = container_software(client, store, image_id, record.environment, [], host)
    recorded = {k: v for k, v in record.fingerprint.container.items() if k != "job"}
    current = {k: v for k, v in probe.items() if k != "job"}
    return compare_fingerprints({"container": recorded}, {"container": current}, cpu_profile=record.cpu_profile,
                                vendor_changes_numerics=cpuprofile.vendor_changes_numerics(record.cpu_profile))


# --- 2. the image ------------------------------------------------------------------------------------------------
def acquire_image(client: docker.DockerClient, record: RunRecord, run_dir: Path, rebuild: bool) -> tuple[str, list[str]]:
    """The recorded image on this engine: present by ID, else pulled by digest, else (if asked) rebuilt.

    Returns:
        The image ID to run and notes for the replay's record.

    Raises:
        ImageNotFoundError: the image cannot be had (with what to do).
        RegistryError: the pull failed or the pulled image is not the recorded one.
    """
    import docker.errors

    wanted = record.image.id
    if wanted:
        try:
            client.images.get(wanted)
            return wanted, []
        except docker.errors.ImageNotFound:
            pass
    failures = []
    for ref in _digests(record):  # the image may have been pushed to several registries; any one will do
        try:
            pulled = pull_by_digest(client, ref)
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
        return _rebuild(client, record, run_dir)
    raise ImageNotFoundError(
        f"image {wanted[:19] if wanted else '?'} of run {record.run_id} is not on this engine and has no registry digest",
        hint="import a bundle made with `envkit export RUN --with-image`, push the image with `envkit build --push`, "
             "or pass --rebuild to rebuild it from the recorded lockfile (the image ID will differ)",
    )


def pull_by_digest(client: docker.DockerClient, ref: str) -> str:
    repo, _, digest = ref.partition("@")
    with translated(f"pulling {ref}", image=ref):
        try:
            client.api.pull(repo, tag=digest)
        except Exception as exc:  # noqa: BLE001 - any pull failure is a registry problem for the user
            raise RegistryError(f"cannot pull {ref}: {str(exc).splitlines()[0][:200]}",
                                hint="check that the registry is reachable from the Docker engine") from exc
        return client.images.get(ref).id


def _rebuild(client: docker.DockerClient, record: RunRecord, run_dir: Path) -> tuple[str, list[str]]:
    from envkit.image.builder import build_image
    from envkit.lock.model import load_lockfile

    lock_path = run_dir / LOCK_COPY
    if not lock_path.is_file():
        raise ImageNotFoundError(f"run {record.run_id} kept no lockfile to rebuild its image from")
    result = build_image(client, load_lockfile(lock_path), cpu_profile=record.cpu_profile)
    return result.image_id, [f"image rebuilt from the recorded lockfile: {result.image_id[:19]} instead of the "
                             f"recorded {(record.image.id or '?')[:19]}"]


def _digests(record: RunRecord) -> list[str]:
    return list(dict.fromkeys(([record.image.digest] if record.image.digest else []) + record.image.digests))


# --- 3. the rerun ------------------------------------------------------------------------------------------------
def replay_job(record: RunRecord, run_dir: Path, image_id: str, mismatch: bool,
               mount_overrides: dict[str, Path] | None = None) -> JobSpec:
    """The original run's job, on its recorded code snapshot and inputs."""
    mounts = []
    for m in record.mounts:
        source = (mount_overrides or {}).get(m["target"], Path(m["source"]))
        mounts.append(Mount(Path(source), m["target"]))
    return JobSpec(
        project=run_dir / "code", script=record.script or "", args=list(record.args), image_id=image_id,
        image_ref=record.image.ref, image_digests=_digests(record), seed=int(record.seed or 0),
        determinism=record.determinism, threads=record.threads, cpu_profile=record.cpu_profile, mounts=mounts,
        trace=record.trace, lock=record.lock, command=[], replay_of=record.run_id, platform_mismatch=mismatch,
        expected_inputs=list(record.inputs), code_source=run_dir / "code",
        extra_env=_user_env(record), memory=record.memory,
        lock_text=(run_dir / LOCK_COPY).read_text() if (run_dir / LOCK_COPY).is_file() else None,
    )


def run_replay(client: docker.DockerClient, store: FileStore, record: RunRecord, job: JobSpec,
               sink: Sink | None = None) -> tuple[RunRecord, Verdict]:
    replay = execute(client, store, job, sink=sink)
    verdict = judge(client, store, record, replay)
    replay.verdict = verdict.to_dict()
    store.write(replay)
    return replay, verdict


def _user_env(record: RunRecord) -> dict[str, str]:
    """The variables the user added with --env (the rest envkit derives again from the record's options).

    Redacted values cannot be replayed; they are left out, and the job sees them unset.
    """
    from envkit.run.executor import job_environment
    from envkit.store.record import REDACTED

    derived = job_environment(replay_job_stub(record), record.run_id)
    return {k: v for k, v in record.environment.items() if k not in derived and v != REDACTED}


def replay_job_stub(record: RunRecord) -> JobSpec:
    return JobSpec(project=Path("."), script="", args=[], image_id="", image_ref=None, image_digests=[],
                   seed=int(record.seed or 0), determinism=record.determinism, threads=record.threads,
                   cpu_profile=record.cpu_profile, trace=record.trace)


# --- 4. the verdict ----------------------------------------------------------------------------------------------
def judge(client: docker.DockerClient, store: FileStore, original: RunRecord, replay: RunRecord) -> Verdict:
    """IDENTICAL, DIVERGED (which files, which tensors, which step) or FAILED."""
    verdict = Verdict(IDENTICAL, exit_code=replay.exit_code, original_exit_code=original.exit_code)
    a_dir, b_dir = store.run_dir(original.run_id), store.run_dir(replay.run_id)
    verdict.stdout_differs, verdict.stdout_first_line = _first_differing_line(a_dir / "stdout.log",
                                                                             b_dir / "stdout.log")
    if replay.status != "succeeded" or replay.exit_code != original.exit_code:
        verdict.kind = FAILED
        return verdict
    old = {e.path: e for e in original.outputs}
    new = {e.path: e for e in replay.outputs}
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a is not None and b is not None and a.sha256 == b.sha256:
            continue
        change = "differs" if a and b else ("missing" if a else "extra")
        diff = FileDiff(path, change, a.sha256 if a else None, b.sha256 if b else None)
        if change == "differs" and path.lower().endswith(TENSOR_SUFFIXES):
            fa, fb = output_file(a_dir, path), output_file(b_dir, path)
            if fa.is_file() and fb.is_file():
                result = tensor_diff(client, replay.image.id or "", fa, fb)
                diff.tensors, diff.tensor_error = result.get("tensors"), result.get("error")
        verdict.files.append(diff)
    if verdict.files:
        verdict.kind = DIVERGED
    verdict.divergence = _trace_divergence(a_dir, b_dir)
    return verdict


def output_file(run_dir: Path, path: str) -> Path:
    """Where an output recorded as ``path`` lies in a run folder."""
    if path.startswith(OUTPUT_PREFIX):
        return run_dir / "output" / path[len(OUTPUT_PREFIX):]
    return run_dir / "work" / path


def tensor_diff(client: docker.DockerClient, image_id: str, a: Path, b: Path) -> dict[str, Any]:
    """Run tensordiff.py in the job's image (it has torch/numpy; the host may not)."""
    from envkit.resources import package_file

    script = package_file("run", "tensordiff.py")
    if script is None or not image_id:
        return {"error": "tensor comparison unavailable"}
    try:
        with translated("comparing tensors"):
            out = client.containers.run(
                image_id, ["python", "/envkit/tensordiff.py", "/cmp/a/" + a.name, "/cmp/b/" + b.name],
                network_mode="none", remove=True,
                volumes=[f"{script.resolve()}:/envkit/tensordiff.py:ro", f"{a.resolve()}:/cmp/a/{a.name}:ro",
                         f"{b.resolve()}:/cmp/b/{b.name}:ro"],
                environment={"PYTHONDONTWRITEBYTECODE": "1"}, stdout=True, stderr=False)
        return json.loads(out.decode())
    except Exception as exc:  # noqa: BLE001 - the file-level verdict stands without tensor detail
        return {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _first_differing_line(a: Path, b: Path) -> tuple[bool, int | None]:
    try:
        la, lb = a.read_bytes().splitlines(), b.read_bytes().splitlines()
    except OSError:
        return False, None
    if la == lb:
        return False, None
    for i, (x, y) in enumerate(zip(la, lb), start=1):
        if x != y:
            return True, i
    return True, min(len(la), len(lb)) + 1


def _trace_divergence(a_dir: Path, b_dir: Path) -> dict[str, Any] | None:
    """The first divergent optimizer step when both runs kept step traces (see envkit.diff)."""
    try:
        from envkit.diff import first_divergence_in_runs
    except ImportError:
        return None
    try:
        return first_divergence_in_runs(a_dir, b_dir)
    except Exception as exc:  # noqa: BLE001 - a trace problem must not hide the file-level verdict
        return {"error": f"{type(exc).__name__}: {exc}"}
