"""The project: where it is, and what its configuration says (``[tool.envkit]`` in pyproject.toml, or envkit.toml).

``find_root`` looks upward from the current folder for the project's markers (a run store ``.envkit/``, ``envkit.toml``,
a ``pyproject.toml`` with a ``[tool.envkit]`` table, or the spec ``envkit.yaml``), stopping at a git work tree's top
(``.git``) or the filesystem root; without a marker the current folder is the project. The store is then
``<root>/.envkit`` unless ``ENVKIT_HOME`` says otherwise (``envkit.settings.store_dir``), so every command works
from any subfolder.

The configuration is strict, as the spec is: unknown keys and values of the wrong type are one clear error. Command
line options override it. Example::

    [tool.envkit]
    lock = "lockfiles/cpu.lock.yaml"     # or image = "REGISTRY/REPO@sha256:..."
    seed = 42
    determinism = "strict"
    threads = 1
    cpu_profile = "native"
    mounts = ["./data:/data"]
    ignore = ["*.ckpt", "wandb/"]        # left out of snapshots, on top of .gitignore and .envkitignore
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from envkit.errors import ProjectConfigError

CONFIG_FILE = "envkit.toml"
PYPROJECT = "pyproject.toml"
SPEC_FILE = "envkit.yaml"
STORE_DIR = ".envkit"
LOCK_DIR = "lockfiles"


@dataclass(frozen=True)
class ProjectConfig:
    """A project's settings; every field is optional (None or empty: not set)."""

    root: Path
    source: Path | None = None  # the file the settings came from
    lock: Path | None = None  # relative paths are relative to the project root
    image: str | None = None
    seed: int | None = None
    determinism: str | None = None
    threads: int | None = None
    cpu_profile: str | None = None
    gpus: str | None = None
    network: str | None = None
    trace: str | None = None
    memory: str | None = None
    mounts: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # keys owned by other parts of envkit (see register_key)


# Keys other modules add (name -> expected Python type): checked for type here, read by their owners from `extra`.
_EXTRA_KEYS: dict[str, type | tuple[type, ...]] = {}
_TYPES: dict[str, type | tuple[type, ...]] = {
    "lock": str, "image": str, "seed": int, "determinism": str, "threads": int, "cpu_profile": str, "gpus": str,
    "network": str, "trace": str, "memory": str, "mounts": list, "env": dict, "ignore": list,
}


def register_key(name: str, kind: type | tuple[type, ...]) -> None:
    """Let a part of envkit own a configuration key (its value lands in ``ProjectConfig.extra``)."""
    if name in _TYPES:
        raise ValueError(f"{name} is a core key")
    _EXTRA_KEYS[name] = kind


def _has_table(pyproject: Path) -> bool:
    try:
        return "envkit" in (tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool") or {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def find_root(start: Path | None = None) -> Path:
    """The project folder: the nearest folder upward from ``start`` with an envkit marker; else ``start``."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if ((folder / STORE_DIR).is_dir() or (folder / CONFIG_FILE).is_file() or (folder / SPEC_FILE).is_file()
                or ((folder / PYPROJECT).is_file() and _has_table(folder / PYPROJECT))):
            return folder
        if (folder / ".git").exists():
            break  # a git work tree's top bounds the project
    return here


def load_config(root: Path | None = None) -> ProjectConfig:
    """The project's configuration (defaults when it has none).

    Raises:
        ProjectConfigError: unreadable TOML, unknown keys, wrong types, both files configured.
    """
    root = find_root(root) if root is None else Path(root).absolute()
    toml, pyproject = root / CONFIG_FILE, root / PYPROJECT
    table: dict[str, Any] | None = None
    source: Path | None = None
    if toml.is_file():
        table, source = _read(toml, nested=False), toml
    if pyproject.is_file():
        data = _read(pyproject, nested=True)
        if data is not None:
            if table is not None:
                raise ProjectConfigError(f"both {toml} and [tool.envkit] in {pyproject} configure envkit",
                                         hint="keep one of them")
            table, source = data, pyproject
    if table is None:
        return ProjectConfig(root=root)
    return _parse(table, root, source)


def _read(path: Path, nested: bool) -> dict[str, Any] | None:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProjectConfigError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProjectConfigError(f"{path} is not valid TOML: {exc}") from exc
    if not nested:
        return data
    table = (data.get("tool") or {}).get("envkit")
    if table is not None and not isinstance(table, dict):
        raise ProjectConfigError(f"{path}: [tool.envkit] must be a table")
    return table


def _parse(table: dict[str, Any], root: Path, source: Path) -> ProjectConfig:
    where = f"{source.name}" + (" [tool.envkit]" if source.name == PYPROJECT else "")
    known = {**_TYPES, **_EXTRA_KEYS}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ProjectConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                                 hint=f"known keys: {', '.join(sorted(known))}")
    for key, value in table.items():
        kind = known[key]
        if isinstance(value, bool) and kind is int or not isinstance(value, kind):
            name = _kind_name(kind)
            article = "an" if name[0] in "aeiou" else "a"
            raise ProjectConfigError(f"{where}: {key} = {value!r:.60} is not {article} {name}")
    for key in ("mounts", "ignore"):
        if not all(isinstance(v, str) for v in table.get(key, [])):
            raise ProjectConfigError(f"{where}: {key} must be a list of strings")
    env = table.get("env", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ProjectConfigError(f"{where}: env must map names to strings")
    if "lock" in table and "image" in table:
        raise ProjectConfigError(f"{where}: give lock or image, not both")
    core = {k: v for k, v in table.items() if k in _TYPES}
    lock = core.pop("lock", None)
    values = {name: tuple(v) if isinstance(v, list) else v for name, v in core.items()}
    return ProjectConfig(root=root, source=source, lock=(root / lock) if lock else None,
                         extra={k: v for k, v in table.items() if k in _EXTRA_KEYS}, **values)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", list: "list", dict: "table", bool: "boolean", float: "number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def config_fields() -> list[str]:
    """The core keys, for help texts."""
    return [f.name for f in fields(ProjectConfig) if f.name not in ("root", "source", "extra")]


def project_lockfiles(root: Path) -> list[Path]:
    """The lockfiles under the project's lockfiles/ folder, sorted."""
    return sorted((root / LOCK_DIR).glob("*.lock.yaml"))
