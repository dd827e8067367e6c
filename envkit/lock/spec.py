"""The user's short spec (``envkit.yaml``): what to lock.

Example::

    name: cpu
    python: "3.11"
    base: envkit/base:bookworm-py3.11
    platform: x86_64-manylinux_2_28
    packages:
      - torch==2.13.0
      - numpy==2.4.6
    find_links: []          # extra find-links (paths or URLs)
    indexes: []             # extra package index URLs
    index_url: null         # replaces the default index
    pip_config: true        # also use this host's pip configuration (find-links, indexes)
    env: {}                 # extra ENV to bake into the image

Unknown keys are refused, so a typo never silently does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import SpecError
from envkit.lock.values import ENV_NAME, IMAGE_REF, NAME, PLATFORM, has_control, python_problem, shown
from envkit.lock.yamlfile import read_yaml

_KEYS = {"name", "python", "base", "platform", "packages", "find_links", "indexes", "index_url", "pip_config", "env"}
_REQUIRED = ("name", "python", "base", "packages")


@dataclass(frozen=True)
class Spec:
    """A validated spec."""

    name: str
    python: str
    base: str
    packages: tuple[str, ...]
    platform: str = "x86_64-manylinux_2_28"
    find_links: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    index_url: str | None = None
    pip_config: bool = True
    env: dict[str, str] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return self.platform.split("-", 1)[0]

    @property
    def manylinux(self) -> tuple[int, int]:
        m = PLATFORM.fullmatch(self.platform)
        assert m is not None  # validated in parse_spec
        return 2, int(m.group(2))


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file.

    Raises:
        SpecError: the file is missing, not YAML, has unknown keys or bad values.
    """
    data = read_yaml(path, SpecError, "spec file", missing_hint="write an envkit.yaml (see README: 'The spec')")
    spec = parse_spec(data, source=str(path))
    return _resolve_relative_links(spec, path.parent)


def parse_spec(data: Any, source: str = "spec") -> Spec:
    """Validate a spec's parsed YAML."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: the spec must be a mapping of keys (name, python, base, packages, ...)")
    if not all(isinstance(k, str) for k in data):
        raise SpecError(f"{source}: keys must be strings, such as name, python, base, packages")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SpecError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(shown, unknown))}",
            hint=f"allowed keys: {', '.join(sorted(_KEYS))}",
        )
    missing = [k for k in _REQUIRED if k not in data or data[k] in (None, "", [])]
    if missing:
        raise SpecError(f"{source}: missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")

    name = _str(data, "name", source)
    if not NAME.fullmatch(name):
        raise SpecError(f"{source}: name {shown(name)} must be lowercase letters, digits, '.', '_' or '-'")
    problem = python_problem(data["python"])
    if problem:
        raise SpecError(f"{source}: python {problem}")
    python = data["python"]
    platform = str(data.get("platform", "x86_64-manylinux_2_28"))
    if platform in ("linux/x86_64", "linux/amd64"):
        platform = "x86_64-manylinux_2_28"
    if not PLATFORM.fullmatch(platform):
        raise SpecError(
            f"{source}: platform {shown(platform)} is not supported",
            hint="use e.g. x86_64-manylinux_2_28 (linux/x86_64) or aarch64-manylinux_2_28",
        )
    packages = data["packages"]
    if not isinstance(packages, list) or not all(isinstance(p, str) and p.strip() for p in packages):
        raise SpecError(f"{source}: packages must be a list of requirement lines such as 'torch==2.13.0'")
    _check_requirements(packages, source)
    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and ENV_NAME.fullmatch(k)
                                            and isinstance(v, (str, int, float, bool)) for k, v in env.items()):
        raise SpecError(f"{source}: env must map variable names to values (strings or numbers)")
    bad = next((k for k, v in env.items() if has_control(str(v))), None)
    if bad is not None:
        raise SpecError(f"{source}: env value of {bad} contains a control character (a newline, an escape...)")
    pip_config = data.get("pip_config", True)
    if not isinstance(pip_config, bool):
        raise SpecError(f"{source}: pip_config must be true or false")
    index_url = data.get("index_url")
    if index_url is not None and not isinstance(index_url, str):
        raise SpecError(f"{source}: index_url must be a string (one URL)")
    base = _str(data, "base", source)
    if not IMAGE_REF.fullmatch(base):
        raise SpecError(f"{source}: base {shown(base)} is not an image reference",
                        hint="e.g. envkit/base:bookworm-py3.11 or python:3.11-slim@sha256:...")
    return Spec(
        name=name,
        python=python,
        base=base,
        packages=tuple(p.strip() for p in packages),
        platform=platform,
        find_links=_str_list(data, "find_links", source),
        indexes=_str_list(data, "indexes", source),
        index_url=str(index_url) if index_url else None,
        pip_config=pip_config,
        env={str(k): str(v) for k, v in env.items()},
    )


def _check_requirements(lines: list[str], source: str) -> None:
    from packaging.requirements import InvalidRequirement, Requirement

    for line in lines:
        try:
            Requirement(line)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0] if str(exc).strip() else "invalid"
            raise SpecError(f"{source}: package line {line!r} is not a valid requirement ({reason})") from exc


def _str(data: dict[str, Any], key: str, source: str) -> str:
    value = data[key]
    if not isinstance(value, (str, int, float)):
        raise SpecError(f"{source}: {key} must be a string")
    return str(value)


def _str_list(data: dict[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and not has_control(v) for v in value):
        raise SpecError(f"{source}: {key} must be a list of strings")
    return tuple(value)


def _resolve_relative_links(spec: Spec, base_dir: Path) -> Spec:
    """find_links given as relative paths are relative to the spec file, not the current directory."""
    links = []
    for link in spec.find_links:
        if "://" in link or Path(link).is_absolute():
            links.append(link)
        else:
            links.append(str((base_dir / link).resolve()))
    return Spec(**{**spec.__dict__, "find_links": tuple(links)})
