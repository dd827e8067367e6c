"""Spec -> lockfile: resolve for the target, pin the base image by digest, seal."""

from __future__ import annotations

from envkit import __version__
from envkit.errors import SpecError
from envkit.lock.model import BaseImage, Lockfile, Platform
from envkit.lock.pipconfig import merge
from envkit.lock.resolver import Resolver, Sources, Target
from envkit.lock.spec import Spec
from envkit.settings import IMAGE_DETERMINISM_ENV


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
