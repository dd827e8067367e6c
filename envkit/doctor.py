"""`envkit doctor`: is this host ready? Each check says what it found and, when it fails, what to do."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True


def run_checks(store_root: Path, cache_root: Path, locks: list[Path] | None = None) -> list[Check]:
    """Every check; ``locks``: the lockfiles whose CUDA the driver must support (default: the project's)."""
    checks = [_engine(), *_gpu(locks), _writable("run store", store_root, "set ENVKIT_HOME to a writable folder"),
              _writable("cache", cache_root, "set ENVKIT_CACHE to a writable folder"),
              _tool("mmdebstrap", "apt-get install -y mmdebstrap",
                    "making a lock's Debian base from its pinned .debs (envkit build, envkit base)"),
              _tool("docker-registry", "apt-get install -y docker-registry", "a local registry for --push tests")]
    checks.append(_disk(cache_root))
    checks.append(_abandoned(store_root))
    return checks


def clean_abandoned(store_root: Path) -> tuple[list[str], int]:
    """Runs whose envkit process died (SIGKILL, a crash) are marked ``abandoned`` and their containers removed.

    Returns:
        The run ids marked, and how many containers were removed.
    """
    from envkit.engine import connect
    from envkit.errors import EnvkitError
    from envkit.settings import LABEL_RUN
    from envkit.store.filestore import FileStore

    store = FileStore(store_root)
    marked = [row["run_id"] for row in store.list().rows if row["status"] == "abandoned"]
    removed = 0
    engine = None
    for run_id in marked:
        record = store.read(run_id)  # read marks it abandoned, with a note; writing keeps that
        store.write(record)
        try:
            engine = engine or connect(timeout=10)
            for container_id, _labels, _state in engine.containers_labelled(f"{LABEL_RUN}={run_id}"):
                engine.remove_container(container_id)
                removed += 1
        except EnvkitError:
            pass  # no engine: the records are still marked; the engine check says what to do
    return marked, removed


def _abandoned(store_root: Path) -> Check:
    from envkit.errors import EnvkitError

    if not store_root.exists():
        return Check("abandoned runs", True, "none", required=False)
    try:
        marked, removed = clean_abandoned(store_root)
    except EnvkitError as exc:
        return Check("abandoned runs", False, exc.message, exc.hint, required=False)
    if not marked:
        return Check("abandoned runs", True, "none", required=False)
    return Check("abandoned runs", True, f"{len(marked)} marked abandoned ({', '.join(marked[:3])}"
                 f"{', ...' if len(marked) > 3 else ''}); {removed} container(s) removed", required=False)

def _engine() -> Check:
    from envkit.engine import connect
    from envkit.errors import EnvkitError

    try:
        info = connect(timeout=10).facts()
    except EnvkitError as exc:
        return Check("Docker engine", False, exc.message, exc.hint)
    return Check("Docker engine", True, f"{info['version']} ({info['storage_driver']}, {info['arch']})")


def _gpu(locks: list[Path] | None) -> list[Check]:
    """The GPUs NVML sees, a container that sees them too (what ``--gpus`` needs), and the driver against the CUDA
    locks (:mod:`envkit.run.gpucheck`). Not required: a host without GPUs runs CPU jobs."""
    from envkit.engine import connect
    from envkit.errors import EnvkitError
    from envkit.fingerprint import gpu_section
    from envkit.run import gpucheck

    gpus = gpu_section()
    if not gpus.get("available"):
        return [Check("GPUs", True, f"none ({gpus.get('reason', 'NVML not available')}); jobs run on the CPU",
                      required=False)]
    checks = [Check("GPUs", True, gpucheck.host_line(gpus), required=False)]
    try:
        engine = connect(timeout=30)
    except EnvkitError:  # the engine check reports engine problems
        engine = None
    if engine is not None:
        c = gpucheck.container_check(engine, gpus)
        checks.append(Check(c.name, c.ok, c.detail, c.fix, required=False))
    for c in gpucheck.driver_checks(gpus, _cuda_locks() if locks is None else locks):
        checks.append(Check(c.name, c.ok, c.detail, c.fix, required=False))
    return checks


def _cuda_locks() -> list[Path]:
    """The project's lockfiles: the configured one and those in lockfiles/."""
    from envkit.errors import EnvkitError
    from envkit.project import find_root, load_config, project_lockfiles

    root = find_root()
    found = list(project_lockfiles(root))
    try:
        configured = load_config(root).lock
    except EnvkitError:
        configured = None
    if configured is not None:
        path = configured if configured.is_absolute() else root / configured
        found.insert(0, path)
    return list(dict.fromkeys(p.resolve() for p in found if p.is_file()))


def _writable(name: str, root: Path, fix: str) -> Check:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check(name, False, f"{root}: {exc.strerror}", fix)
    return Check(name, True, str(root))


def _tool(name: str, fix: str, purpose: str) -> Check:
    path = shutil.which(name)
    return Check(name, path is not None, path or f"not installed (needed for {purpose})", None if path else fix,
                 required=False)


def _disk(root: Path) -> Check:
    probe = root if root.exists() else Path(os.path.expanduser("~"))
    free = shutil.disk_usage(probe).free
    ok = free > 10 * 2**30
    return Check("disk", ok, f"{free / 2**30:.0f} GiB free at {probe}",
                 None if ok else "free space: a CPU image with torch needs about 2 GiB, a CUDA image 10 GiB or more",
                 required=False)
