"""envkit: reproducible ML environments.

The public Python API (see :mod:`envkit.api`), loaded on first use so that ``import envkit`` stays cheap:

- :func:`lock`, :func:`build`, :func:`run`, :func:`replay`, :func:`runs`, :func:`show`: the CLI's workflows;
- :func:`seed_everything`, :func:`rng_state`, :func:`set_rng_state`: seeding in a plain process, without containers.

Errors are :class:`envkit.errors.EnvkitError` subclasses.
"""

from __future__ import annotations

import types
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "build", "lock", "replay", "rng_state", "run", "runs", "seed_everything",
           "set_rng_state", "show"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from envkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'envkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)


class _CallableModule(types.ModuleType):
    """A module named like an API function (``envkit.run``, ``envkit.lock``, ``envkit.replay``). Importing it makes
    it the package's attribute of that name, in place of the function :func:`__getattr__` gave, so a notebook's
    second ``envkit.run(...)`` would call a module: the module forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from envkit import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _forward_calls(module_name: str) -> None:
    """Make the module ``module_name`` (one of the API's names) callable as that API function."""
    import sys

    sys.modules[module_name].__class__ = _CallableModule
