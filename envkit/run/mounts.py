"""Which host paths a job may see, and where: the rules for ``--mount`` on a run and on a replay.

A job's inputs are folders or files the user names. A record from elsewhere (an imported bundle, a pulled run) names
another machine's paths, so replaying it takes each input from ``--mount DST=SRC`` alone. Whatever their origin,
mounts never bring the engine's socket, a device, or a system folder into the container, and never cover a system
folder inside it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from envkit.engine import Mount
from envkit.errors import MountError
from envkit.settings import CONTAINER_META, CONTAINER_OUTPUT, CONTAINER_TOOLS, CONTAINER_WORKDIR, IMAGE_VENV

# Host folders never mounted (at or below them), and container folders never covered.
HOST_SYSTEM = ("/proc", "/sys", "/dev", "/run", "/var/run", "/var/lib/docker", "/boot", "/etc")
CONTAINER_SYSTEM = ("/proc", "/sys", "/dev", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot",
                    "/run", "/var/run", "/opt/envkit", IMAGE_VENV)
RESERVED_TARGETS = (CONTAINER_WORKDIR, CONTAINER_META, CONTAINER_OUTPUT, CONTAINER_TOOLS)
MAX_SCAN = 200_000  # entries looked at for sockets and devices in a mounted folder


def _under(path: str, folders: tuple[str, ...]) -> str | None:
    for folder in folders:
        if path == folder or path.startswith(folder.rstrip("/") + "/"):
            return folder
    return None


def check_target(target: str) -> str:
    """A container path for a read-only input: absolute, normalised, not envkit's, not a system folder.

    Raises:
        MountError: naming the target and why.
    """
    if not isinstance(target, str) or not target.startswith("/") or "\0" in target:
        raise MountError(f"mount target {target!r} is not an absolute container path", hint="e.g. --mount ./data:/data")
    clean = target.rstrip("/") or "/"
    if clean != str(PurePosixPath(clean)) or "/../" in f"{clean}/" or "/./" in f"{clean}/":
        raise MountError(f"mount target {target!r} is not a normalised path (no '.', '..' or '//')")
    if clean == "/" or _under(clean, RESERVED_TARGETS):
        raise MountError(f"mount target {target} is reserved by envkit")
    folder = _under(clean, CONTAINER_SYSTEM)
    if folder:
        raise MountError(f"mount target {target} would cover the image's {folder}",
                         hint="mount inputs at a folder of their own, e.g. /data")
    return clean


def check_source(source: Path) -> Path:
    """A host path to hand a job read-only: no socket, device or pipe (itself or inside it), no system folder.

    Raises:
        MountError: naming the path and why.
    """
    path = Path(os.path.abspath(source))
    real = Path(os.path.realpath(path))
    if str(real) == "/" or _under(str(real), HOST_SYSTEM):
        raise MountError(f"mount source {source} is a system folder ({real})",
                         hint="mount a folder of your data, not the host's own")
    try:
        st = os.stat(real)
    except OSError as exc:
        raise MountError(f"mount source {source} does not exist ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode):
        _scan(real, source)
    elif not stat.S_ISREG(st.st_mode):
        raise MountError(f"mount source {source} is a socket, device or pipe",
                         hint="a job gets files and folders only (never the engine's socket)")
    return path


def _scan(root: Path, shown: Path) -> None:
    count = 0
    for current, dirs, files in os.walk(root):
        for name in files + dirs:
            count += 1
            if count > MAX_SCAN:
                return  # big trees: the hash pass skips special files anyway; sockets hide in small folders
            try:
                mode = os.lstat(os.path.join(current, name)).st_mode
            except OSError:
                continue
            if stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise MountError(f"mount source {shown} holds a socket, device or pipe "
                                 f"({os.path.join(current, name)})",
                                 hint="a job gets files and folders only (never the engine's socket)")


def parse_mount(text: str) -> Mount:
    """``SRC:DST`` as a read-only input mount, checked.

    Raises:
        MountError: malformed, a missing or unsafe source, or a target envkit reserves or a system folder.
    """
    src, sep, dst = text.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise MountError(f"--mount {text!r} is not SRC:DST with an absolute DST",
                         hint="e.g. --mount ./data:/data (mounted read-only, hashed as inputs)")
    return Mount(check_source(Path(src).expanduser()), check_target(dst))


def replay_mounts(recorded: list[dict[str, str]], overrides: dict[str, Path], imported: bool) -> list[Mount]:
    """The mounts of a replay: each recorded target from ``overrides`` (``--mount DST=SRC``) or, for a run made
    here, from its recorded source; a foreign record's sources are never used.

    Raises:
        MountError: an imported run's input not given, an override for a target the run did not have, an unsafe
            source or target.
    """
    targets = []
    for m in recorded:
        if not isinstance(m, dict) or not isinstance(m.get("target"), str) or not isinstance(m.get("source"), str):
            raise MountError(f"the record names a malformed mount {m!r:.80}")
        targets.append(check_target(m["target"]))
    unknown = sorted(set(overrides) - set(targets))
    if unknown:
        raise MountError(f"--mount {unknown[0]}=... names no input of this run",
                         hint=f"its inputs are mounted at: {', '.join(targets) or 'nothing'}")
    missing = [t for t in targets if t not in overrides] if imported else []
    if missing:
        raise MountError(f"this run was imported from elsewhere: its record names another host's paths, so give "
                         f"each input yourself ({', '.join(missing)})",
                         hint="e.g. " + " ".join(f"--mount {t}=./{Path(t).name or 'data'}" for t in missing))
    mounts = []
    for m, target in zip(recorded, targets):
        source = overrides.get(target, Path(m["source"]))
        mounts.append(Mount(check_source(source), target))
    return mounts
