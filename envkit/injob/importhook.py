"""The import hook: each hooked library is seeded or patched right after the job itself first imports it.

:class:`Finder` sits first on ``sys.meta_path`` and answers only for the names in :data:`HOOKS`, by asking the
finders after it and wrapping the loader they return. Nothing is imported on the job's behalf. The hook functions
live in :mod:`.libraries` and :mod:`.workers` and are looked up by name when a hooked module loads, so a job that
imports none of them never loads those modules.
"""

import sys

from . import state

# module name -> (in-job module, hook run once the job imports it, reseed for workers and pool tasks or None)
HOOKS = {
    "random": ("libraries", "hook_random", "reseed_random"),
    "numpy.random": ("libraries", "hook_numpy_random", "reseed_numpy"),
    "torch": ("libraries", "hook_torch", "reseed_torch"),
    "torch.utils.data.dataloader": ("workers", "hook_dataloader", None),
    "multiprocessing.pool": ("workers", "hook_pool", None),
    "concurrent.futures.process": ("workers", "hook_executor", None),
}


def _function(module_name, name):
    full = f"{__package__}.{module_name}"
    if full not in sys.modules:
        __import__(full)
    return getattr(sys.modules[full], name)


class HookLoader:
    """Wraps a module's loader: runs the original, then the hook; the module keeps its original loader."""

    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def __getattr__(self, name):  # get_source, get_filename, ... for code that inspects a spec it looked up
        if name == "_loader":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        # Put the real loader back first: importlib.resources and friends look at __spec__.loader.
        module.__spec__.loader = self._loader
        module.__loader__ = self._loader
        self._loader.exec_module(module)
        run_hook(self._name, module)


class Finder:
    """First on sys.meta_path; answers only for the hooked names, by asking the finders after it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in HOOKS:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = HookLoader(spec.loader, fullname)
                return spec
        return None


def install_hooks():
    S = state.S
    if not S.hooks_installed:
        sys.meta_path.insert(0, Finder())
        S.hooks_installed = True
    for name in HOOKS:
        module = sys.modules.get(name)
        if module is not None:  # imported before activation (another .pth, or a host process): hook it now
            run_hook(name, module, write=False)  # the caller writes the report once, after all of them


def run_hook(name, module, write=True):
    S = state.S
    if not S.active or S.level == "off":
        return
    where, hook, _ = HOOKS[name]
    try:
        _function(where, hook)(module)
    except Exception as exc:  # noqa: BLE001 - seeding must never break the job's own import
        state.warn(f"could not seed {name} ({type(exc).__name__}: {exc})")
    if write:
        state.sync_report()
        state.write_report()


def reseed_loaded():
    """Reseed every hooked library the process has loaded (a worker or a task entered a new stream)."""
    for name, (where, _, reseed) in HOOKS.items():
        module = sys.modules.get(name)
        if reseed is not None and module is not None and getattr(module, "_envkit_patched", False):
            _function(where, reseed)(module)
