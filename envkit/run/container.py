"""The container settings training jobs need, with the defaults envkit picks: shared memory, IPC namespace, ulimits,
the user, and variables read from an env file.

- **Shared memory.** Docker gives a container a 64 MB ``/dev/shm``; a DataLoader whose workers hand batches over
  through it dies with "Bus error" as soon as a few batches are in flight (two workers prefetching two 32 MB
  batches each already need 128 MB). Outside a container Linux sizes ``/dev/shm`` at half the RAM, and that is
  envkit's default: half of the memory the job may use (``--memory`` if given, else the host's), never less than
  Docker's 64 MB. The size is a ceiling, not a reservation: pages count against the job's memory only when written.
- **IPC.** ``private`` by default (the job sees only its own IPC objects); ``shareable`` and ``host`` on request.
  With ``host`` the job uses the host's ``/dev/shm``, so no size is set.
- **ulimits.** Jobs with GPUs get NCCL's ``memlock`` (unlimited) and ``stack`` (64 MiB), as NVIDIA advises for its
  framework containers (:data:`envkit.settings.GPU_ULIMITS`); CPU jobs keep the engine's defaults. An engine that
  may not raise them (rootless, or sandboxed without CAP_SYS_RESOURCE) refuses the container at start; the job then
  runs with the engine's own limits, and the record says so (:func:`without_ulimits`).
- **User.** ``--user UID[:GID]`` runs the job as that numeric user; without it the executor's rule applies (the
  invoking user, or an unprivileged uid when envkit runs as root).

Every value is recorded, and a replay uses the recorded ones.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from envkit.engine import ContainerSpec
from envkit.errors import JobError
from envkit.settings import DEFAULT_IPC, GPU_ULIMITS, IPC_MODES
from envkit.sizes import format_size, parse_size

DOCKER_DEFAULT_SHM = 64 * 2**20
_USER = re.compile(r"(\d{1,10})(?::(\d{1,10}))?")
ENV_FILE_MAX_BYTES = 1 << 20
# Variables a job may not set itself: envkit derives them from the run's options.
RESERVED_ENV = ("PYTHONHASHSEED", "NVIDIA_VISIBLE_DEVICES")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class ContainerSettings:
    """What the job's container gets besides its image, command and mounts."""

    shm_size: str | None  # docker syntax (8g, 512m); None: the host's /dev/shm (--ipc host)
    ipc: str
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    user: str | None = None  # explicit uid[:gid]; None: the executor's default rule


def default_shm_size(memory: str | None, host_memory: int | None) -> str:
    """Half of the memory the job may use (``--memory``, else the host's RAM), as Linux sizes ``/dev/shm``; at least
    Docker's 64 MB."""
    try:
        limit = parse_size(memory) if memory else None
    except ValueError:  # the engine refuses a bad --memory itself, and the run is recorded failed with its words
        limit = None
    limits = [n for n in (limit, host_memory) if n]
    budget = min(limits) if limits else 2 * 2**30
    return format_size(max(DOCKER_DEFAULT_SHM, budget // 2))


def container_settings(gpus: str, memory: str | None = None, shm_size: str | None = None, ipc: str | None = None,
                       user: str | None = None, host_memory: int | None = None) -> ContainerSettings:
    """The settings of a new run from its options, with envkit's defaults filled in.

    Raises:
        JobError: a bad size, IPC mode or user, with what is accepted.
    """
    ipc = ipc or DEFAULT_IPC
    if ipc not in IPC_MODES:
        raise JobError(f"--ipc {ipc!r} is not one of {', '.join(IPC_MODES)}",
                       hint="private (the default) keeps the job's IPC to itself; host shares the host's /dev/shm")
    if shm_size is not None:
        try:
            size = parse_size(shm_size)
        except ValueError as exc:
            raise JobError(f"--shm-size: {exc}") from None
        if size < 2**20:
            raise JobError(f"--shm-size {shm_size} is under 1 MiB", hint="give a size such as 1g or 16g")
        shm = format_size(size)
    else:
        shm = default_shm_size(memory, host_memory)
    if ipc == "host":
        shm = None  # the host's /dev/shm: Docker ignores a size there
    ulimits = dict(GPU_ULIMITS) if gpus != "none" else {}
    return ContainerSettings(shm_size=shm, ipc=ipc, ulimits=ulimits, user=check_user(user) if user else None)


def without_ulimits(spec: ContainerSpec, reason: str) -> ContainerSpec | None:
    """The spec again without its ulimits when the engine refused to start it for them ("error setting rlimit"),
    else None (the failure is another one)."""
    if not spec.ulimits or "rlimit" not in reason.lower():
        return None
    return replace(spec, ulimits={})


def check_user(user: str) -> str:
    """``UID`` or ``UID:GID`` (numeric: the job's image has no passwd entries for envkit's users); ``UID`` alone
    means ``UID:UID``.

    Raises:
        JobError: not numeric, or another user than the invoking one when envkit is not root (only root can hand
            the run's folders to another uid).
    """
    m = _USER.fullmatch(user.strip())
    if not m:
        raise JobError(f"--user {user!r} is not UID or UID:GID (numbers)", hint="e.g. --user 1000:1000")
    uid, gid = m.group(1), m.group(2) or m.group(1)
    if os.getuid() != 0 and int(uid) != os.getuid():
        raise JobError(f"--user {uid} is not you (uid {os.getuid()}), and only root can hand the run's folders to "
                       "another user", hint="leave --user out (the job runs as you), or run envkit as root")
    return f"{uid}:{gid}"


def check_job_env(env: dict[str, str], where: str = "--env") -> None:
    """Refuse variables envkit sets itself (``ENVKIT_*``, ``PYTHONHASHSEED``, ``NVIDIA_VISIBLE_DEVICES``).

    Raises:
        JobError: naming the variable and the option that sets it.
    """
    for key in env:
        if key.startswith("ENVKIT_") or key in RESERVED_ENV:
            hint = "choose the job's GPUs with --gpus" if key == "NVIDIA_VISIBLE_DEVICES" else None
            raise JobError(f"{where}: {key} is set by envkit from the run's options", hint=hint)


def read_env_file(path: Path) -> dict[str, str]:
    """Variables from a Docker-style env file: ``KEY=VALUE`` lines taken literally (no quotes removed, as ``docker
    run --env-file`` does), ``KEY`` alone takes this shell's value (skipped when unset), ``#`` comments and blank
    lines ignored. Secrets among them are redacted in the record like ``--env`` ones (:mod:`envkit.store.redact`).

    Raises:
        JobError: unreadable, too large, binary, or a line that is not a variable (its line number named).
    """
    try:
        if path.stat().st_size > ENV_FILE_MAX_BYTES:
            raise JobError(f"--env-file {path} is larger than {ENV_FILE_MAX_BYTES >> 20} MiB; an env file holds "
                           "variables")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobError(f"--env-file {path} not found") from None
    except IsADirectoryError:
        raise JobError(f"--env-file {path} is a directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"cannot read --env-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    env: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r").lstrip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not _ENV_NAME.fullmatch(key) or "\x00" in value:
            raise JobError(f"--env-file {path}, line {number}: {key[:40]!r} is not a variable name",
                           hint="each line is KEY=VALUE, KEY (taken from your shell) or a # comment")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    check_job_env(env, f"--env-file {path}")
    return env
