"""Files shipped with envkit: the top-level docker/ folder (Dockerfile template, in-image files).

An installed wheel carries docker/ as the package data ``envkit/_docker``; a source checkout (editable install)
reads the repository's docker/ folder. docker/ is deliberately not a Python package: a folder named ``docker``
with an ``__init__.py`` at the repository root would shadow the docker SDK for anything run from there.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE / "_docker", _HERE.parent / "docker")


def docker_file(name: str) -> Path:
    """Path of a file from docker/ (the Dockerfile template, the bootstrap .pth)."""
    for folder in _CANDIDATES:
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"envkit is missing its data file docker/{name}; reinstall envkit")


def package_file(module_dir: str, name: str) -> Path | None:
    """Path of a source file inside envkit (e.g. run/bootstrap.py), or None if it does not exist."""
    path = _HERE / module_dir / name
    return path if path.is_file() else None
