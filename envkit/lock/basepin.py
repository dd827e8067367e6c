"""Pinning a spec's base image by content, for a lock.

What the spec's ``base`` names decides the kind:

- ``envkit/base:<suite>-py<X.Y>``: a Debian base envkit makes. The exact .debs are resolved now (one mmdebstrap
  run against the host's Debian mirrors, :func:`envkit.lock.debian.resolve_base`); no engine is needed, and every
  host then makes the same base from those .debs. ``...-dev`` adds a C compiler and Python's headers (triton).
- ``repository[:tag]@sha256:<digest>``: a registry base, pulled by that digest. When the engine cannot pull it here
  (no registry access), the lock records it unverified, with the spec's Python, and says so.
- ``repository:tag`` that the engine can pull, or that it pulled before: a registry base, pinned by the digest the
  registry gave.
- an image only this engine has (no registry digest): a local base by image ID, which builds only where that image
  exists; the lock says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from envkit.engine import ContainerSpec, Engine
from envkit.errors import EngineUnavailableError, EnvkitError, ImageNotFoundError, RegistryError, SpecError
from envkit.lock.model import BaseImage, DebianBase
from envkit.settings import LABEL_BASE_PYTHON, LABEL_BASE_SOURCE

DEBIAN_REF = re.compile(r"envkit/base:(?P<suite>[a-z]+)-py(?P<python>3\.\d{1,2})(?P<dev>-dev)?")


@dataclass
class PinnedBase:
    base: BaseImage
    notes: list[str] = field(default_factory=list)


def debian_ref(suite: str, python: str, compiler: bool = False) -> str:
    """The name of envkit's Debian base for a suite: ``envkit/base:bookworm-py3.11`` (``...-dev``: with gcc)."""
    return f"envkit/base:{suite}-py{python}" + ("-dev" if compiler else "")


def pin_base(ref: str, python: str, arch: str, engine: Callable[[], Engine], cache_dir: Path | None = None,
             on_step: Callable[[str], None] = lambda _m: None) -> PinnedBase:
    """The base ``ref`` of a spec, pinned by content (see the module's doc for the kinds).

    Args:
        ref: the spec's ``base``.
        python: the spec's Python (major.minor).
        arch: the target's Debian/Docker architecture (amd64, arm64).
        engine: returns the engine, called only for a registry or local base.
        cache_dir: envkit's cache: the .debs a Debian resolution downloads enter it.

    Raises:
        SpecError: a Debian suite that does not ship the spec's Python, a base without python3.
        BaseImageError: mmdebstrap missing or failing (Debian bases).
        ImageNotFoundError, RegistryError: a registry or local base that cannot be had.
    """
    m = DEBIAN_REF.fullmatch(ref)
    if m:
        return PinnedBase(_debian(m.group("suite"), m.group("python"), python, arch, cache_dir, on_step,
                                  compiler=bool(m.group("dev"))))
    if "@sha256:" in ref:
        return _by_digest(ref, python, engine, on_step)
    return _by_name(ref, engine, on_step)


def _debian(suite: str, ref_python: str, python: str, arch: str, cache_dir: Path | None,
            on_step: Callable[[str], None], compiler: bool = False) -> BaseImage:
    from envkit.lock.debian import BASE_PACKAGES, COMPILER_PACKAGES, SUITE_PYTHON, mmdebstrap_version, resolve_base

    if suite not in SUITE_PYTHON:
        raise SpecError(f"unknown Debian suite {suite!r}", hint=f"choose one of {', '.join(SUITE_PYTHON)}")
    if SUITE_PYTHON[suite] != ref_python or ref_python != python:
        raise SpecError(f"Debian {suite} ships Python {SUITE_PYTHON[suite]}, the spec asks for {python}",
                        hint=f"use base: {debian_ref(suite, SUITE_PYTHON[suite])} with python: "
                             f"\"{SUITE_PYTHON[suite]}\", or a suite that ships {python}")
    packages = BASE_PACKAGES + (COMPILER_PACKAGES if compiler else ())
    version = mmdebstrap_version()
    on_step(f"resolving the Debian {suite} base (mmdebstrap {version}, {', '.join(packages)})")
    pins = resolve_base(suite, packages, arch=arch, cache_dir=cache_dir)
    full = next((p.version.split("-", 1)[0] for p in pins if p.name == f"python{python}"), None)
    if full is None:
        raise SpecError(f"the resolved {suite} base has no python{python} package")
    return BaseImage(ref=debian_ref(suite, python, compiler), digest=None, python=full.split(":")[-1], kind="debian",
                     debian=DebianBase(suite=suite, packages=packages, mmdebstrap=version, debs=tuple(pins)))


def _by_digest(ref: str, python: str, engine: Callable[[], Engine], on_step: Callable[[str], None]) -> PinnedBase:
    digest = "sha256:" + ref.split("@sha256:", 1)[1]
    pull_ref = BaseImage(ref=ref, digest=digest, python=python, kind="registry").pull_ref
    try:
        eng = engine()
        image = eng.find_image(pull_ref)
        if image is None:
            on_step(f"pulling {pull_ref}")
            image = eng.image(eng.pull(pull_ref))
    except (RegistryError, EngineUnavailableError) as exc:
        reason = exc.message.rsplit(f"{pull_ref}: ", 1)[-1]
        return PinnedBase(
            BaseImage(ref=ref, digest=digest, python=python, kind="registry"),
            [f"the base could not be pulled here ({reason}): the lock pins it by digest, with the spec's Python "
             f"{python}, unverified; `envkit build` pulls it and checks that it runs Python {python}"])
    return PinnedBase(BaseImage(ref=ref, digest=digest, python=_python_of(eng, image.id, image.labels, ref),
                                kind="registry", image_id=image.id))


def _by_name(ref: str, engine: Callable[[], Engine], on_step: Callable[[str], None]) -> PinnedBase:
    eng = engine()
    image = eng.find_image(ref)
    if image is None:
        try:
            on_step(f"pulling {ref}")
            image = eng.image(eng.pull(ref))
        except RegistryError as exc:
            raise ImageNotFoundError(
                f"base image {ref} does not exist on this Docker engine and cannot be pulled ({exc.message})",
                hint="name a Debian base (base: envkit/base:bookworm-py3.11) or a registry image by digest "
                     "(base: python:3.11-slim-bookworm@sha256:...)") from exc
    python = _python_of(eng, image.id, image.labels, ref)
    name = ref.split("@", 1)[0]
    digests = [d for d in image.repo_digests if d.split("@", 1)[0] == _repository(name)] or list(image.repo_digests)
    if digests:
        return PinnedBase(BaseImage(ref=ref, digest=digests[0].split("@", 1)[1], python=python, kind="registry",
                                    image_id=image.id))
    return PinnedBase(
        BaseImage(ref=ref, digest=image.id, python=python, kind="image", source=image.labels.get(LABEL_BASE_SOURCE)),
        [f"the base {ref} is a local image with no registry digest: the lock pins it by image ID "
         f"({image.id[:19]}), and it builds only on an engine that has that image; push it to a registry, or use "
         "a Debian base (base: envkit/base:bookworm-py3.11), to build it anywhere"])


def _repository(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0] if ":" in last else name


def _python_of(engine: Engine, image_id: str, labels: dict[str, str], ref: str) -> str:
    return (labels or {}).get(LABEL_BASE_PYTHON) or _probe_python(engine, image_id, ref)


def _probe_python(engine: Engine, image_id: str, ref: str) -> str:
    """A base not made by envkit: ask its python3 for its version (a throwaway container)."""
    spec = ContainerSpec(image=image_id, command=["python3", "-c", "import platform;print(platform.python_version())"])
    try:
        out = engine.run_output(spec)
    except EngineUnavailableError:
        raise
    except EnvkitError as exc:
        raise SpecError(f"base image {ref} has no working python3 ({exc.message})",
                        hint="use a base with python3 (e.g. envkit/base:bookworm-py3.11)") from exc
    return out.decode().strip()
