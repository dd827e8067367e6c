"""Spec -> lockfile: pin the base by content, resolve for the target, publish the wheel URLs, seal.

A lock is shared (committed, sent along with a run), so it holds nothing of the machine that made it: a wheel found
in a local folder gets its public URL (PyPI's file of the same name and sha256, or PyTorch's index for a ``+cpu``
build) or no URL at all, every URL loses its ``user:password@``, and the lock's sources are the spec's public ones.
The local folders used stay known on this host only (:func:`envkit.lock.localsources.remember`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from envkit import __version__
from envkit.errors import FetchError, LockfileError, SpecError
from envkit.lock.indexes import is_remote, public_url, strip_credentials
from envkit.lock.localsources import local_path
from envkit.lock.model import DEFAULT_EPOCH, BaseImage, Lockfile, PinnedPackage, Platform
from envkit.lock.pipconfig import merge
from envkit.lock.resolver import Resolver, Sources, Target
from envkit.lock.spec import Spec
from envkit.settings import IMAGE_DETERMINISM_ENV

if TYPE_CHECKING:
    from envkit.engine import Engine

LOOKUP_THREADS = 8


def spec_sources(spec: Spec, host: Sources | None) -> Sources:
    """The spec's own sources, then (if pip_config) the host's pip configuration."""
    own = Sources(index_url=spec.index_url, indexes=spec.indexes, find_links=spec.find_links)
    return merge(own, host) if (spec.pip_config and host is not None) else own


def public_sources(spec: Spec) -> dict[str, list[str]]:
    """The spec's sources as a lock records them: remote ones only, without credentials."""
    def keep(urls) -> list[str]:
        return [strip_credentials(u) for u in urls if is_remote(u)]

    return {"index_url": keep([spec.index_url] if spec.index_url else []), "indexes": keep(spec.indexes),
            "find_links": keep(spec.find_links)}


def publish_urls(pins: list[PinnedPackage], lookup: Callable[[PinnedPackage], str | None] | None = None,
                 ) -> tuple[list[PinnedPackage], list[str]]:
    """The pins with public URLs: remote ones without credentials, local ones replaced by ``lookup``'s answer
    (default: PyPI's file of that name and sha256, else PyTorch's index for a local build) or by no URL.

    Returns:
        The pins, and notes on the wheels that got no public URL.
    """
    def default(pin: PinnedPackage) -> str | None:
        return public_url(pin.name, pin.version, pin.filename, pin.sha256)

    lookup = lookup or default
    local = [i for i, p in enumerate(pins) if p.url and local_path(p.url) is not None]
    notes: list[str] = []
    found: dict[int, str | None] = {}

    def one(i: int) -> None:
        try:
            found[i] = lookup(pins[i])
        except FetchError as exc:
            found[i] = None
            notes.append(f"no public URL looked up for {pins[i].filename} ({exc.message})")

    with ThreadPoolExecutor(LOOKUP_THREADS) as pool:
        list(pool.map(one, local))
    out = []
    for i, pin in enumerate(pins):
        if i in found:
            if found[i] is None:
                notes.append(f"{pin.filename} has no public URL: a build elsewhere finds it by name and sha256 in "
                             "its own pip configuration")
            out.append(replace(pin, url=found[i]))
        else:
            out.append(replace(pin, url=strip_credentials(pin.url) if pin.url else None))
    return out, sorted(set(notes))


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` from the environment (the reproducible-builds convention), else envkit's fixed one.

    Raises:
        SpecError: the variable is set to something that is not a count of seconds.
    """
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return DEFAULT_EPOCH
    if not value.isdigit() or int(value) >= 2**32:
        raise SpecError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds since 1970",
                        hint="unset it, or set it to e.g. 1700000000")
    return int(value)


def make_lock(spec: Spec, resolver: Resolver, base: BaseImage, sources: Sources,
              lookup: Callable[[PinnedPackage], str | None] | None = None) -> tuple[Lockfile, list[str]]:
    """Resolve the spec's packages for its target and return the sealed lock, with notes.

    Raises:
        SpecError: the base image's Python is not the spec's.
        ResolveError: a requirement cannot be satisfied for the target.
    """
    if not (base.python == spec.python or base.python.startswith(spec.python + ".")):
        raise SpecError(
            f"the spec asks for Python {spec.python} but base image {spec.base} has Python {base.python}",
            hint=f"set python: \"{'.'.join(base.python.split('.')[:2])}\" or choose another base",
        )
    pins = resolver.resolve(list(spec.packages), Target(python=spec.python, platform=spec.platform), sources)
    pins, notes = publish_urls(list(pins), lookup)
    environment = {**IMAGE_DETERMINISM_ENV, **spec.env}
    lock = Lockfile(
        name=spec.name,
        python=spec.python,
        platform=Platform(os="linux", arch=spec.arch, tag=spec.platform),
        base=base,
        requirements=spec.packages,
        sources=public_sources(spec),
        environment=dict(sorted(environment.items())),
        packages=tuple(pins),
        generated_by=f"envkit {__version__}",
        epoch=source_date_epoch(),
    )
    return lock.sealed(), notes


@dataclass(frozen=True)
class LockResult:
    path: Path
    lock: Lockfile
    notes: list[str] = field(default_factory=list)


def lock_spec(engine: Engine | None, spec_path: Path, output: Path | None = None,
              resolver: Resolver | None = None, on_step: Callable[[str], None] = lambda _m: None) -> LockResult:
    """The lock workflow: read the spec, pin its base by content, resolve, write the lockfile atomically.

    A lock whose content is the one already at ``output`` keeps that file's expected image IDs.

    Args:
        engine: for a registry or local base (None: connect when one is needed; a Debian base needs none).
        output: the lockfile to write; default ``lockfiles/<name>.lock.yaml`` under the current folder.
        resolver: default :class:`~envkit.lock.resolver.UvResolver`.

    Raises:
        SpecError, BaseImageError (a Debian base), ImageNotFoundError and RegistryError (other bases), ResolveError.
    """
    from envkit.lock.basepin import pin_base
    from envkit.lock.localsources import remember
    from envkit.lock.model import load_lockfile, write_lockfile
    from envkit.lock.pipconfig import host_pip_sources
    from envkit.lock.resolver import UvResolver
    from envkit.lock.spec import load_spec
    from envkit.settings import cache_dir

    spec = load_spec(spec_path)

    def get_engine() -> Engine:
        nonlocal engine
        if engine is None:
            from envkit.engine import connect

            engine = connect()
        return engine

    arch = Platform("linux", spec.arch, spec.platform).docker_arch
    pinned = pin_base(spec.base, spec.python, arch, get_engine, cache_dir(), on_step)
    sources = spec_sources(spec, host_pip_sources() if spec.pip_config else None)
    on_step(f"resolving {len(spec.packages)} requirements for {spec.platform} / Python {spec.python}")
    lock, notes = make_lock(spec, resolver or UvResolver(), pinned.base, sources)
    path = output or Path("lockfiles") / f"{spec.name}.lock.yaml"
    try:
        previous = load_lockfile(path) if path.is_file() else None
    except LockfileError:
        previous = None
    if previous is not None and previous.content_sha256 == lock.content_sha256:
        lock = lock.with_images(previous.images, previous.image_parts)  # the same inputs: the same expected IDs
    write_lockfile(lock, path)
    remember(lock, sources)  # its local sources are this host's own: `envkit build` may read wheels from them
    return LockResult(path, lock, pinned.notes + notes)
