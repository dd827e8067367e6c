"""Spec -> lockfile: resolve for the target, pin the base image by digest, seal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from envkit import __version__
from envkit.errors import SpecError
from envkit.lock.model import BaseImage, Lockfile, Platform
from envkit.lock.pipconfig import merge
from envkit.lock.resolver import Resolver, Sources, Target
from envkit.lock.spec import Spec
from envkit.settings import IMAGE_DETERMINISM_ENV

if TYPE_CHECKING:
    from envkit.engine import Engine


def spec_sources(spec: Spec, host: Sources | None) -> Sources:
    """The spec's own sources, then (if pip_config) the host's pip configuration."""
    own = Sources(index_url=spec.index_url, indexes=spec.indexes, find_links=spec.find_links)
    return merge(own, host) if (spec.pip_config and host is not None) else own


def make_lock(spec: Spec, resolver: Resolver, base: BaseImage, sources: Sources) -> Lockfile:
    """Resolve the spec's packages for its target and return the sealed lock.

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
    environment = {**IMAGE_DETERMINISM_ENV, **spec.env}
    lock = Lockfile(
        name=spec.name,
        python=spec.python,
        platform=Platform(os="linux", arch=spec.arch, tag=spec.platform),
        base=base,
        requirements=spec.packages,
        sources=sources.as_dict(),
        environment=dict(sorted(environment.items())),
        packages=tuple(pins),
        generated_by=f"envkit {__version__}",
    )
    return lock.sealed()


@dataclass(frozen=True)
class LockResult:
    path: Path
    lock: Lockfile


def lock_spec(engine: Engine, spec_path: Path, output: Path | None = None,
              resolver: Resolver | None = None) -> LockResult:
    """The lock workflow: read the spec, pin its base on ``engine``, resolve, write the lockfile atomically.

    Args:
        output: the lockfile to write; default ``lockfiles/<name>.lock.yaml`` under the current folder.
        resolver: default :class:`~envkit.lock.resolver.UvResolver`.

    Raises:
        SpecError, ImageNotFoundError (the base), ResolveError.
    """
    from envkit.lock.basepin import inspect_base
    from envkit.lock.localsources import remember
    from envkit.lock.model import write_lockfile
    from envkit.lock.pipconfig import host_pip_sources
    from envkit.lock.resolver import UvResolver
    from envkit.lock.spec import load_spec

    spec = load_spec(spec_path)
    base = inspect_base(engine, spec.base)
    sources = spec_sources(spec, host_pip_sources() if spec.pip_config else None)
    lock = make_lock(spec, resolver or UvResolver(), base, sources)
    path = output or Path("lockfiles") / f"{spec.name}.lock.yaml"
    write_lockfile(lock, path)
    remember(lock)  # its local sources are this host's own: `envkit build` may read wheels from them
    return LockResult(path, lock)
