"""The resolver boundary: requirement lines in, pinned wheels for the TARGET platform out.

:class:`Resolver` is the small interface; :class:`UvResolver` implements it with uv's ``pip compile`` (the binary
shipped in the ``uv`` wheel), asking for a PEP 751 ``pylock.toml`` that carries each wheel's URL and hash. The
wheel chosen for each package is the best match for the target's tags (CPython x.y, manylinux_2_N for the arch),
computed here, not by the host's pip: a CUDA lock resolves on a machine without a GPU.
"""

from __future__ import annotations

import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from envkit.errors import ResolveError
from envkit.lock.model import PinnedPackage


@dataclass(frozen=True)
class Sources:
    """Where packages come from."""

    index_url: str | None = None
    indexes: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "index_url": [self.index_url] if self.index_url else [],
            "indexes": list(self.indexes),
            "find_links": list(self.find_links),
        }


@dataclass(frozen=True)
class Target:
    python: str  # "3.11"
    platform: str  # "x86_64-manylinux_2_28"


class Resolver(Protocol):
    def resolve(self, requirements: list[str], target: Target, sources: Sources) -> list[PinnedPackage]:
        """Pin every package (transitive ones too) to one wheel for the target, with its hash."""


def target_tags(target: Target) -> list[Tag]:
    """Wheel tags the target accepts, best first (as pip on that platform would rank them)."""
    arch, libc = target.platform.split("-", 1)
    glibc_minor = int(libc.rsplit("_", 1)[1])
    platforms = [f"manylinux_2_{m}_{arch}" for m in range(glibc_minor, 16, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    platforms += [f"{legacy[17]}_{arch}"] if glibc_minor >= 17 else []
    platforms += [f"manylinux_2_{m}_{arch}" for m in range(16, 4, -1) if m <= glibc_minor]
    platforms += [f"{legacy[12]}_{arch}", f"{legacy[5]}_{arch}"]
    major, minor = (int(x) for x in target.python.split("."))
    abi = f"cp{major}{minor}"
    tags = list(cpython_tags(python_version=(major, minor), abis=[abi, "abi3", "none"], platforms=platforms))
    tags += list(compatible_tags(python_version=(major, minor), interpreter=abi, platforms=platforms))
    return tags


def select_wheel(name: str, wheels: list[dict], tags: list[Tag]) -> dict | None:
    """The wheel entry whose tags rank best for the target, or None."""
    rank = {t: i for i, t in enumerate(tags)}
    best: tuple[int, dict] | None = None
    for w in wheels:
        filename = w.get("name") or w["url"].rsplit("/", 1)[-1]
        try:
            _, _, _, wtags = parse_wheel_filename(filename.split("#", 1)[0])
        except InvalidWheelFilename:
            continue
        score = min((rank[t] for t in wtags if t in rank), default=None)
        if score is not None and (best is None or score < best[0]):
            best = (score, {**w, "name": filename})
    return best[1] if best else None


class UvResolver:
    """Resolve with ``uv pip compile --format pylock.toml`` for a target Python and platform."""

    def __init__(self, uv_bin: str | None = None, timeout: float = 600) -> None:
        if uv_bin is None:
            from uv import find_uv_bin

            uv_bin = find_uv_bin()
        self.uv_bin = uv_bin
        self.timeout = timeout

    def command(self, req_file: Path, out_file: Path, target: Target, sources: Sources) -> list[str]:
        cmd = [
            self.uv_bin, "pip", "compile", str(req_file), "-o", str(out_file), "--format", "pylock.toml",
            "--python-version", target.python, "--python-platform", target.platform,
            "--generate-hashes", "--no-header", "--quiet", "--no-config", "--only-binary", ":all:",
        ]
        if sources.index_url:
            cmd += ["--index-url", sources.index_url]
        for url in sources.indexes:
            cmd += ["--extra-index-url", url]
        for link in sources.find_links:
            cmd += ["--find-links", link]
        return cmd

    def resolve(self, requirements: list[str], target: Target, sources: Sources) -> list[PinnedPackage]:
        with tempfile.TemporaryDirectory(prefix="envkit-lock-") as tmp:
            req_file = Path(tmp) / "requirements.in"
            req_file.write_text("\n".join(requirements) + "\n", encoding="utf-8")
            out_file = Path(tmp) / "pylock.toml"
            cmd = self.command(req_file, out_file, target, sources)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
            except subprocess.TimeoutExpired as exc:
                raise ResolveError(f"resolution took longer than {self.timeout:.0f} s",
                                   hint="check that the package indexes are reachable") from exc
            if proc.returncode != 0:
                raise ResolveError(_explain_uv_failure(proc.stderr), hint=_hint_for(proc.stderr))
            data = tomllib.loads(out_file.read_text(encoding="utf-8"))
        return self._pins(data, target)

    def _pins(self, data: dict, target: Target) -> list[PinnedPackage]:
        tags = target_tags(target)
        pins = []
        for pkg in data.get("packages", []):
            name = canonicalize_name(pkg["name"])
            wheel = select_wheel(name, pkg.get("wheels") or [], tags)
            if wheel is None:
                raise ResolveError(
                    f"{name} {pkg.get('version')} has no wheel for Python {target.python} on {target.platform}",
                    hint="envkit builds images offline from wheels only; pin a version that ships a wheel",
                )
            sha = (wheel.get("hashes") or {}).get("sha256")
            if not sha:
                raise ResolveError(f"the index gave no sha256 for {wheel['name']}")
            pins.append(PinnedPackage(name=name, version=str(pkg["version"]), filename=wheel["name"],
                                      url=wheel["url"], sha256=sha))
        return sorted(pins, key=lambda p: p.name)


def _explain_uv_failure(stderr: str) -> str:
    """uv's reason in one line, naming the requirement it could not satisfy."""
    lines = [ln.strip(" ×╰─▶│") .strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Because") or "was not found" in ln or "not found in the package registry" in ln:
            return "cannot resolve: " + ln.rstrip(".")
    for ln in lines:
        if ln.lower().startswith("error:"):
            return "cannot resolve: " + ln[6:].strip()
    return "cannot resolve: " + (lines[0] if lines else "uv failed without a message")


def _hint_for(stderr: str) -> str:
    if "not found in the package registry" in stderr or "was not found" in stderr:
        return "check the package name and version, and the spec's indexes / find_links"
    if "network" in stderr.lower() or "dns" in stderr.lower() or "connect" in stderr.lower():
        return "a package index is unreachable; check indexes in the spec or your pip configuration"
    return "loosen the conflicting pins named above"
