"""The project's environment when none is given: the one resolver behind ``envkit build`` and ``envkit run``.

Without a lockfile (or, for a run, an image), the project folder (:func:`envkit.project.find_root`) is searched, in
this order, for:

1. the ``lock`` its configuration names (``envkit.toml`` or ``[tool.envkit]``; for a run, also ``image``);
2. the one lockfile under ``lockfiles/``;
3. ``envkit.yaml`` with no lock yet: it is locked first, into ``lockfiles/<name>.lock.yaml`` (as ``uv sync`` makes
   ``uv.lock``), and that lock is then built.

The spec's own lock counts among the lockfiles of step 2, made or not: a project whose ``envkit.yaml`` is named
``proj`` and whose ``lockfiles/`` holds ``cpu.lock.yaml`` has two candidates, and building either one silently would
surprise someone. More than one candidate, or none, is one :class:`ProjectEnvironmentError` line that lists what was
found. A spec that no longer matches its lock (packages, Python, base, platform or env changed) gives a note; the lock
is used as it is, since locking again can move every pin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from envkit.errors import ProjectEnvironmentError
from envkit.project import LOCK_DIR, SPEC_FILE, find_root, load_config, project_lockfiles

if TYPE_CHECKING:
    from envkit.engine import Engine
    from envkit.lock.model import Lockfile
    from envkit.lock.spec import Spec

LOCK_SUFFIX = ".lock.yaml"


@dataclass(frozen=True)
class ProjectEnvironment:
    """What a project builds and runs in: a lockfile (``spec`` set: still to be written from it) or an image."""

    root: Path
    lock: Path | None = None
    image: str | None = None
    spec: Path | None = None  # envkit.yaml, to lock into ``lock`` before anything else
    source: str = ""  # where it came from, for messages
    notes: list[str] = field(default_factory=list)

    @property
    def needs_lock(self) -> bool:
        return self.spec is not None


def find_environment(start: Path | None = None, *, images: bool = True) -> ProjectEnvironment:
    """The project's environment, found as the module docstring says; nothing is written.

    Args:
        start: a folder of the project (default: the current folder).
        images: whether an ``image`` in the configuration counts (a run) or not (a build: nothing to build).

    Raises:
        ProjectEnvironmentError: no candidate, or more than one. ProjectConfigError: a malformed configuration.
        SpecError: a malformed envkit.yaml.
    """
    root = find_root(start)
    config = load_config(root)
    spec_path = root / SPEC_FILE
    spec = _load_spec(spec_path) if spec_path.is_file() else None
    spec_lock = root / LOCK_DIR / f"{spec.name}{LOCK_SUFFIX}" if spec is not None else None
    where = config.source.name if config.source is not None else "the project configuration"
    if config.lock is not None:
        if config.lock.is_file():
            return _with_notes(ProjectEnvironment(root, lock=config.lock, source=f"lock in {where}"), spec)
        if spec_lock is not None and config.lock.absolute() == spec_lock.absolute():
            return ProjectEnvironment(root, lock=spec_lock, spec=spec_path, source=f"lock in {where}, from {SPEC_FILE}")
        raise ProjectEnvironmentError(f"{where} names lock {_rel(config.lock, root)}, which does not exist",
                                      hint=f"make it with `envkit lock SPEC -o {_rel(config.lock, root)}`, or fix "
                                           f"lock in {where}")
    if config.image is not None:
        if images:
            return ProjectEnvironment(root, image=config.image, source=f"image in {where}")
        raise ProjectEnvironmentError(f"{where} names image {config.image}: there is nothing to build",
                                      hint="envkit run uses that image as it is; to build one, set lock instead")
    locks = project_lockfiles(root)
    candidates = list(dict.fromkeys([*locks, *([spec_lock] if spec_lock is not None else [])]))
    if len(candidates) == 1:
        (lock,) = candidates
        if lock.is_file():
            return _with_notes(ProjectEnvironment(root, lock=lock, source=f"the one lock in {LOCK_DIR}/"), spec)
        return ProjectEnvironment(root, lock=lock, spec=spec_path, source=f"{SPEC_FILE}, locked now")
    if not candidates:
        raise ProjectEnvironmentError(
            f"no environment in {root}: no lock in its configuration, no {LOCK_DIR}/*{LOCK_SUFFIX}, no {SPEC_FILE}",
            hint=f"write an {SPEC_FILE} (name, python, base, packages), or give a lockfile")
    found = [_rel(p, root) + ("" if p.is_file() else f" (from {SPEC_FILE}, not made yet)") for p in candidates]
    raise ProjectEnvironmentError(f"more than one environment in {root}: {', '.join(found)}",
                                  hint="choose one: envkit build LOCKFILE, envkit run --lock LOCKFILE, or set "
                                       "lock = \"...\" in envkit.toml")


def ensure_lock(engine: Engine | None, env: ProjectEnvironment,
                on_step: Callable[[str], None] | None = None) -> Path:
    """The environment's lockfile, written from its spec first when it has none yet (``engine`` pins the spec's
    base image then; it may be None when ``env.needs_lock`` is false).

    Raises:
        ProjectEnvironmentError: the environment is an image. What :func:`envkit.lock.locking.lock_spec` raises.
    """
    if env.lock is None:
        raise ProjectEnvironmentError(f"the project's environment is the image {env.image}, not a lockfile")
    if env.spec is not None:
        from envkit.lock.locking import lock_spec

        if on_step is not None:
            on_step(f"locking {_rel(env.spec, env.root)} into {_rel(env.lock, env.root)}")
        lock_spec(engine, env.spec, env.lock)
    return env.lock


def spec_differences(spec: Spec, lock: Lockfile) -> list[str]:
    """What a spec asks for that its lock was not made from (field names; empty when the lock is current)."""
    from envkit.settings import IMAGE_DETERMINISM_ENV

    pairs = {
        "packages": (tuple(spec.packages), tuple(lock.requirements)),
        "python": (spec.python, lock.python),
        "base": (spec.base, lock.base.ref),
        "platform": (spec.platform, lock.platform.tag),
        "env": ({**IMAGE_DETERMINISM_ENV, **spec.env}, dict(lock.environment)),
    }
    return [name for name, (asked, locked) in pairs.items() if asked != locked]


def _with_notes(env: ProjectEnvironment, spec: Spec | None) -> ProjectEnvironment:
    """Add a note when the chosen lock is the spec's own and the spec changed since it was made."""
    if spec is None or env.lock is None or env.lock.name != f"{spec.name}{LOCK_SUFFIX}":
        return env
    from envkit.errors import LockfileError
    from envkit.lock.model import load_lockfile

    try:
        changed = spec_differences(spec, load_lockfile(env.lock))
    except LockfileError:
        return env  # reading the lock for real reports it
    if changed:
        env.notes.append(f"{SPEC_FILE} changed since {_rel(env.lock, env.root)} was made ({', '.join(changed)}); "
                         f"the lock is used as it is: run `envkit lock {SPEC_FILE}` to lock it again")
    return env


def _load_spec(path: Path) -> Spec:
    from envkit.lock.spec import load_spec

    return load_spec(path)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return str(path)
