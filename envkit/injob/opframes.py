"""Where an op comes from: the innermost frame of the user's code, told apart from torch's, the standard library's
and envkit's own, and from torch's data loading (whose ops the op trace leaves out).

Part of the in-job package: the standard library only at import; torch is handed in to find its folder.
"""

import os
import sys
import sysconfig

USER, INTERNAL, LOADER = "user", "internal", "loader"
_kinds = {}  # co_filename -> one of the three (kept across installs: it cannot change)
_roots = None


def internal_roots(torch):
    """Folders whose frames are not the user's: torch, the standard library (not its site-packages), this package;
    and torch's data loading. Computed once per process."""
    global _roots
    if _roots is not None:
        return _roots
    paths = sysconfig.get_paths()
    stdlib = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    sites = {os.path.realpath(paths[k]) for k in ("purelib", "platlib") if paths.get(k)}
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    mine = {os.path.dirname(os.path.realpath(__file__)), torch_dir}
    loader = {os.path.join(torch_dir, "utils", "data"), os.path.join(torch_dir, "multiprocessing")}
    _roots = (stdlib, sites, mine, loader)
    return _roots


def kind(filename, roots):
    """USER, INTERNAL (torch, the standard library, envkit) or LOADER (torch's data loading) for a code file."""
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string> from torch's own codegen
        return INTERNAL
    stdlib, sites, mine, loader = roots
    real = os.path.realpath(filename)

    def under(folders):
        return any(real.startswith(folder + os.sep) for folder in folders)

    if under(loader):
        return LOADER
    if under(mine) or os.path.basename(real).startswith("envkit_"):  # the bootstrap and step trace in an image
        return INTERNAL
    return INTERNAL if under(stdlib) and not under(sites) else USER


def user_frame(roots):
    """``(file, line)`` of the innermost frame in the user's code, None, or LOADER for torch.utils.data's work.

    Called from the tracer's ``record``: the walk starts at the frame that called ``record`` (the dispatch mode).
    """
    frame = sys._getframe(2)
    cache = _kinds
    while frame is not None:
        code = frame.f_code
        found = cache.get(code.co_filename)
        if found is None:
            found = cache[code.co_filename] = kind(code.co_filename, roots)
        if found is USER:
            return code.co_filename, frame.f_lineno
        if found is LOADER:
            return LOADER
        frame = frame.f_back
    return None
