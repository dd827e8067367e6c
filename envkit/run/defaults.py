"""What a run uses for an option it was not given: the project configuration first, then envkit's defaults.

With ``[tool.envkit]`` (or ``envkit.toml``) naming the lock or image and the seed, ``envkit run train.py`` needs no
flag. An option given on the command line (or to :func:`envkit.run`) wins over the configuration: a scalar
replaces it, ``--lock``/``--image`` replace the configured lock or image, a ``--mount`` replaces the configured
mount at the same container path, and an ``--env`` the configured variable of that name. Paths in the configuration
(the lock, mount sources) are relative to the folder that holds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envkit.errors import ProjectConfigError
from envkit.project import ProjectConfig, load_config
from envkit.settings import (
    CPU_PROFILES,
    DEFAULT_DETERMINISM,
    DEFAULT_THREADS,
    DEFAULT_TRACE,
    DETERMINISM_LEVELS,
    NETWORK_MODES,
)

SEED_MAX = 2**32 - 1
RESERVED_ENV = ("PYTHONHASHSEED",)  # and every ENVKIT_* name: envkit sets them from the run's options


def project_config(folder: Path | None = None) -> ProjectConfig:
    """The project's configuration, found upward from ``folder`` (default: the current folder); the keys other
    parts of envkit own are registered by importing :mod:`envkit.run`.

    Raises:
        ProjectConfigError: malformed configuration.
    """
    from envkit.project import find_root

    return load_config(find_root(folder))


def run_settings(config: ProjectConfig, *, seed: int | None = None, lock: Path | None = None,
                 image: str | None = None, determinism: str | None = None, threads: int | None = None,
                 gpus: str | None = None, cpu_profile: str | None = None, network: str | None = None,
                 trace: str | None = None, memory: str | None = None, mounts: list[str] | None = None,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """The :class:`envkit.run.runner.RunRequest` fields from what was given (None: not given) and ``config``.

    ``seed`` stays None when neither gives one: the caller says how to give it.

    Raises:
        ProjectConfigError: a configured value out of its range or choices (naming the key and the file).
    """
    where = config.source.name if config.source else "project configuration"

    def pick(name: str, given: Any, default: Any) -> Any:
        return given if given is not None else (getattr(config, name) if getattr(config, name) is not None
                                                else default)

    out: dict[str, Any] = {
        "seed": pick("seed", seed, None),
        "determinism": pick("determinism", determinism, DEFAULT_DETERMINISM),
        "threads": pick("threads", threads, DEFAULT_THREADS),
        "gpus": pick("gpus", gpus, "none"),
        "cpu_profile": pick("cpu_profile", cpu_profile, None),
        "network": pick("network", network, "none"),
        "trace": pick("trace", trace, DEFAULT_TRACE),
        "memory": pick("memory", memory, None),
        "ignore": list(config.ignore),
    }
    if lock is not None or image is not None:
        out["lock"], out["image"] = lock, image
    else:
        out["lock"], out["image"] = config.lock, config.image
    _check(config, where)
    out["mounts"] = merged_mounts(config, list(mounts or []))
    for key in config.env:
        if key.startswith("ENVKIT_") or key in RESERVED_ENV:
            raise ProjectConfigError(f"{where}: env.{key} is set by envkit from the run's options")
    out["env"] = {**config.env, **(env or {})}
    return out


def _check(config: ProjectConfig, where: str) -> None:
    """Range and choice checks of the configured values (command-line values are checked by the CLI's options)."""
    if config.seed is not None and not 0 <= config.seed <= SEED_MAX:
        raise ProjectConfigError(f"{where}: seed = {config.seed} is out of range (0 to 2**32-1)")
    if config.threads is not None and not 1 <= config.threads <= 512:
        raise ProjectConfigError(f"{where}: threads = {config.threads} is out of range (1 to 512)")
    for name, choices in (("determinism", DETERMINISM_LEVELS), ("cpu_profile", CPU_PROFILES),
                          ("network", NETWORK_MODES)):
        value = getattr(config, name)
        if value is not None and value not in choices:
            raise ProjectConfigError(f"{where}: {name} = {value!r} is not one of {', '.join(choices)}")
    trace = config.trace
    if trace is not None and trace not in ("off", "auto") and not (trace.isdigit() and int(trace) > 0):
        raise ProjectConfigError(f"{where}: trace = {trace!r} is not 'auto', 'off' or a positive step interval")


def merged_mounts(config: ProjectConfig, given: list[str]) -> list[str]:
    """The configured mounts (sources made absolute against the configuration's folder) with the given ones;
    a given mount replaces a configured one at the same container path."""
    targets = {m.partition(":")[2].rstrip("/") for m in given}
    out = []
    for m in config.mounts:
        src, sep, dst = m.partition(":")
        if not sep:
            out.append(m)  # malformed: parse_mount says so, quoting it
            continue
        if dst.rstrip("/") in targets:
            continue
        path = Path(src).expanduser()
        out.append(f"{path if path.is_absolute() else config.root / path}:{dst}")
    return out + given
