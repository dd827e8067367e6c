"""Files shipped with envkit: the top-level docker/ folder (the bootstrap's .pth hook) and the in-job package.

An installed wheel carries docker/ as the package data ``envkit/_docker``; a source checkout (editable install)
reads the repository's docker/ folder. docker/ is deliberately not a Python package: a folder named ``docker``
with an ``__init__.py`` at the repository root would shadow the docker SDK for anything run from there.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_CANDIDATES = (_HERE / "_docker", _HERE.parent / "docker")
INJOB_DIR = _HERE / "injob"


def docker_file(name: str) -> Path:
    """Path of a file from docker/ (the bootstrap's .pth)."""
    for folder in _CANDIDATES:
        path = folder / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"envkit is missing its data file docker/{name}; reinstall envkit")


def injob_file(name: str) -> Path:
    """Path of one module of the in-job package (``probe.py``, ``tensordiff.py``...)."""
    path = INJOB_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"envkit is missing envkit/injob/{name}; reinstall envkit")
    return path


def injob_sources() -> dict[str, bytes]:
    """Every module of the in-job package by file name, as it goes into images (sorted, bytes)."""
    return {p.name: p.read_bytes() for p in sorted(INJOB_DIR.glob("*.py"))}
