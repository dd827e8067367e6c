"""The seeding bootstrap: seeds every generator of every Python process of a job, with no change to its code.

How it gets in. The image build copies this file into the venv's site-packages as ``envkit_bootstrap.py``, next to
``envkit-bootstrap.pth``, whose one line runs ``envkit_bootstrap.activate()`` at interpreter start-up when
``ENVKIT_SEED`` is set. A ``.pth`` line rather than ``sitecustomize``: it cannot be shadowed by a
``sitecustomize`` the job or a package ships, and it costs one dictionary lookup when the variable is unset. Every
interpreter of the job runs it, because they all inherit the environment: the script, its subprocesses, spawn
children (DataLoader workers, pools), torchrun ranks. Fork children inherit the seeded state and the hooks.

How it stays cheap. ``activate()`` imports nothing beyond ``os`` and ``sys``: it puts a finder first on
``sys.meta_path`` that wraps the loader of ``random``, ``numpy.random``, ``torch``, ``torch.utils.data.dataloader``,
``multiprocessing.pool`` and ``concurrent.futures.process``, so each is seeded or patched right after the job itself
first imports it. Nothing here imports numpy or torch; a job that imports neither pays only for this module and the
report.

What it does, by determinism level (``ENVKIT_DETERMINISM``):

* ``strict``: seeds; ``cudnn.deterministic=True``, ``cudnn.benchmark=False``, ``torch.use_deterministic_algorithms
  (True)``; thread counts pinned (``ENVKIT_THREADS``, default 1); unseeded ``numpy.random.default_rng()`` and
  ``random.Random()`` get seeds derived from the run's seed, a stream key and a per-process counter; an op with no
  deterministic implementation ends the process with one line naming it.
* ``warn``: the same, with ``warn_only=True``.
* ``seed``: seeds only (threads pinned only when ``ENVKIT_THREADS`` is given).  ``off``: nothing but the report.

Seeds per process. The script, its subprocesses, spawn children and every torchrun rank seed ``random``, numpy's
legacy generator and torch (CPU and, lazily, every CUDA device) with the run's seed itself, as Lightning's
``seed_everything`` does on every rank. A DataLoader worker reseeds them from (its base seed, its rank), so workers
and ranks differ; a multiprocessing pool worker reseeds them before each task from (job id, task index), so
``pool.map`` gives the same results whichever worker runs which task (the same for ``ProcessPoolExecutor``, from
(executor number, task number) given in submission order). A fork child keeps numpy's and torch's state and gets
a derived ``random`` seed (Python reseeds ``random`` from urandom in every fork child).

The report: one JSON file per process, ``$ENVKIT_REPORT_DIR/bootstrap-<pid>.json``, written at activation and
rewritten (temp file + ``os.replace``) whenever a library gets seeded or the process becomes a worker, so a fork
worker that leaves through ``os._exit`` still leaves one. Flat: each value is a scalar, a list of strings or a
mapping of names to scalars. ``null`` where a field does not apply or torch is not loaded.

=========================  ===========================================================================================
schema_version             1
pid, ppid                  ints
role                       ``main``, ``subprocess``, ``spawn child``, ``fork child``, ``rank N``,
                           ``dataloader worker K``, ``dataloader worker K of rank N``, ``pool worker``,
                           ``executor worker``
rank, worker_id            torch.distributed rank (``RANK``), DataLoader worker id
seed                       the run's seed (``ENVKIT_SEED``)
process_seed               the seed the global generators of this process got last (a derived one in workers)
determinism                ``strict`` | ``warn`` | ``seed`` | ``off``
derived_seeds              whether unseeded ``default_rng()`` / ``Random()`` get derived seeds
stream                     the key derived seeds are drawn under, e.g. ``main``, ``rank/1``, ``pool/3/7``
derived_counts             mapping: generator kind -> how many derived seeds were handed out so far
hashseed, hashseed_ok      ``PYTHONHASHSEED`` in effect (``random`` when unset or ignored); whether it is the seed
threads                    the pinned thread count, or null
thread_env                 mapping: OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS -> value in effect
cublas_workspace_config    ``CUBLAS_WORKSPACE_CONFIG`` in effect
libraries                  mapping: seeded library -> version (``torch.cuda``: CUDA version, seeded lazily)
torch_version, torch_git_version, torch_cuda_version, cudnn_version, cpu_capability
torch_num_threads, torch_num_interop_threads
deterministic_algorithms, deterministic_warn_only, cudnn_deterministic, cudnn_benchmark, cudnn_allow_tf32
cuda_matmul_allow_tf32, float32_matmul_precision, cuda_initialized (read without initialising CUDA)
extensions                 modules whose ``install(torch)`` ran after torch was seeded (trace, portable ops)
warnings, errors           one-line messages (errors: the strict-mode line if an op stopped the process)
python_version             e.g. ``3.11.7``
=========================  ===========================================================================================

Only ``os`` and ``sys`` are imported at module top: this file must load in a bare interpreter in a few milliseconds.
"""

import os
import sys

SCHEMA_VERSION = 1
RNG_STATE_VERSION = 1

# The names below repeat envkit.settings (this file cannot import envkit); a unit test keeps them equal.
ENV_SEED = "ENVKIT_SEED"
ENV_DETERMINISM = "ENVKIT_DETERMINISM"
ENV_THREADS = "ENVKIT_THREADS"
ENV_REPORT_DIR = "ENVKIT_REPORT_DIR"
ENV_TRACE = "ENVKIT_TRACE"
ENV_CPU_PROFILE = "ENVKIT_CPU_PROFILE"
ENV_BOOTSTRAP_ROOT = "ENVKIT_BOOTSTRAP_ROOT"
DETERMINISM_LEVELS = ("strict", "warn", "seed", "off")
DEFAULT_DETERMINISM = "strict"
DEFAULT_THREADS = 1
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# torch's message when an op has no deterministic implementation (at::Context::alertNotDeterministic).
_NONDETERMINISTIC = "does not have a deterministic implementation"
_M64 = (1 << 64) - 1


class BootstrapError(ValueError):
    """A bad seed, level, thread count or RNG state given to the bootstrap."""


class _State:
    """Everything the bootstrap knows about this process (one instance, ``_S``)."""

    def __init__(self):
        self.active = False
        self.in_run = False  # activated from the environment of an envkit run, not by seed_everything()
        self.seed = 0
        self.level = "off"
        self.threads = None
        self.derive = False
        self.process_seed = 0
        self.stream = ("main",)
        self.counters = {}
        self.report_dir = None
        self.report = {}
        self.hooks_installed = False
        self.extensions_done = False
        self.fork_seed = 0  # drawn in the parent just before each fork, for the child's random
        self.executors = 0  # ProcessPoolExecutors created so far (their tasks are numbered per executor)


_S = _State()


# --- validation ------------------------------------------------------------------------------------------------------
def _parse_seed(value, name="seed"):
    try:
        seed = int(str(value).strip(), 10)
    except ValueError:
        raise BootstrapError(f"{name}={value!r} is not an integer; give a seed with 0 <= seed < 2**32") from None
    if not 0 <= seed < 2**32:
        raise BootstrapError(f"{name}={value!r} is out of range; give a seed with 0 <= seed < 2**32")
    return seed


def _parse_level(value, name="determinism"):
    level = str(value).strip().lower()
    if level not in DETERMINISM_LEVELS:
        raise BootstrapError(f"{name}={value!r} is not one of {', '.join(DETERMINISM_LEVELS)}")
    return level


def _parse_threads(value, name="threads"):
    try:
        threads = int(str(value).strip(), 10)
    except ValueError:
        raise BootstrapError(f"{name}={value!r} is not an integer; give a thread count >= 1") from None
    if threads < 1:
        raise BootstrapError(f"{name}={value!r} is out of range; give a thread count >= 1")
    return threads


# --- public entry points ---------------------------------------------------------------------------------------------
def activate(*, in_run=True):
    """Configure this process from the ``ENVKIT_*`` environment (the ``.pth`` line calls this at start-up).

    Does nothing when ``ENVKIT_SEED`` is unset or the bootstrap is already active. A bad value ends the process
    with one line on stderr and exit code 2: at start-up there is no caller to raise to.
    """
    impl = _impl()
    if impl is not _THIS:
        return
    if _S.active or ENV_SEED not in os.environ:
        return
    env = os.environ
    try:
        seed = _parse_seed(env[ENV_SEED], ENV_SEED)
        level = _parse_level(env.get(ENV_DETERMINISM) or DEFAULT_DETERMINISM, ENV_DETERMINISM)
        threads = env.get(ENV_THREADS, "").strip()
        threads = _parse_threads(threads, ENV_THREADS) if threads else None
    except BootstrapError as exc:
        sys.stderr.write(f"envkit: error: {exc} (hint: fix the value given to `envkit run`)\n")
        sys.stderr.flush()
        os._exit(2)
    if threads is None and level in ("strict", "warn"):
        threads = DEFAULT_THREADS
    try:
        _configure(seed, level, threads, env.get(ENV_REPORT_DIR) or None, in_run=in_run)
    except Exception as exc:  # noqa: BLE001 - a bug here must not break every interpreter in the image
        sys.stderr.write(f"envkit: warning: the seeding bootstrap failed ({type(exc).__name__}: {exc}); "
                         "this process is NOT seeded\n")


def seed_everything(seed, determinism=DEFAULT_DETERMINISM, threads=None):
    """Seed random, numpy, torch (CPU and CUDA) in this process and apply a determinism level.

    Libraries not imported yet are seeded when the process first imports them. The values are also written to the
    environment, so Python children that load the bootstrap (DataLoader and pool workers) follow them.

    Args:
        seed: the run's seed, 0 <= seed < 2**32.
        determinism: ``strict``, ``warn``, ``seed`` or ``off``.
        threads: pin torch and OpenMP thread counts to this number; ``None`` leaves them as they are.

    Returns:
        The report of this process (see the module docstring).

    Raises:
        BootstrapError: a bad seed, level or thread count.
    """
    impl = _impl()
    if impl is not _THIS:
        return impl.seed_everything(seed, determinism=determinism, threads=threads)
    seed = _parse_seed(seed)
    level = _parse_level(determinism)
    threads = None if threads is None else _parse_threads(threads)
    os.environ[ENV_SEED] = str(seed)
    os.environ[ENV_DETERMINISM] = level
    if threads is not None:
        os.environ[ENV_THREADS] = str(threads)
    _configure(seed, level, threads, os.environ.get(ENV_REPORT_DIR) or None, in_run=_S.in_run)
    return {key: value.copy() if isinstance(value, (dict, list)) else value for key, value in _S.report.items()}


def rng_state():
    """Capture random, numpy's legacy generator, torch CPU and CUDA, and the derived-seed counters.

    Returns:
        A dict of plain Python values and CPU tensors: it goes into ``torch.save`` (and loads with
        ``weights_only=True``) or ``pickle``.
    """
    impl = _impl()
    if impl is not _THIS:
        return impl.rng_state()
    import random

    state = {"envkit_rng_state": RNG_STATE_VERSION, "random": random.getstate(),
             "numpy": None, "torch": None, "torch_cuda": None, "derived": None}
    npr = sys.modules.get("numpy.random")
    if npr is not None:
        name, keys, pos, has_gauss, cached = npr.get_state(legacy=True)
        state["numpy"] = (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        state["torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():  # never initialise CUDA just to read it
            state["torch_cuda"] = torch.cuda.get_rng_state_all()
    if _S.active:
        state["derived"] = {"seed": _S.seed, "stream": list(_S.stream), "counters": dict(_S.counters),
                            "process_seed": _S.process_seed}
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` captured; the process then continues bit-identically.

    Raises:
        BootstrapError: ``state`` is not a dict made by :func:`rng_state`.
    """
    impl = _impl()
    if impl is not _THIS:
        return impl.set_rng_state(state)
    if not isinstance(state, dict) or state.get("envkit_rng_state") != RNG_STATE_VERSION:
        raise BootstrapError("not a state from envkit.rng_state() (no 'envkit_rng_state': 1 key)")
    import random

    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        import numpy

        name, keys, pos, has_gauss, cached = state["numpy"]
        numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached))
    if state.get("torch") is not None:
        import torch

        torch.set_rng_state(state["torch"].cpu())
        if state.get("torch_cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["torch_cuda"]])
    derived = state.get("derived")
    if derived is not None and _S.active:
        _S.stream = tuple(derived["stream"])
        _S.counters = dict(derived["counters"])
        _S.process_seed = derived["process_seed"]


def nondeterministic_op_line(exc, in_run=True):
    """The one line shown when torch refuses an op in strict mode, or None if ``exc`` is something else.

    Looks through the exception's causes and its text, since DataLoader and pool workers re-raise it wrapped.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if _NONDETERMINISTIC in text:
            import re

            found = re.search(r"([\w.:]+) " + _NONDETERMINISTIC, text)
            op = found.group(1) if found else "an operation"
            hint = ("rerun with `--determinism warn` to let it run with a warning" if in_run else
                    "use determinism='warn' to let it run with a warning")
            return (f"envkit: error: {op} has no deterministic implementation and the determinism level is "
                    f"strict; {hint}")
        exc = exc.__cause__ or exc.__context__
    return None


# --- configuration ---------------------------------------------------------------------------------------------------
def _impl():
    """The module that holds the state: the in-image ``envkit_bootstrap`` when it is active, else this one.

    ``envkit.seed_everything`` inside an image and the wrappers unpickled in spawn children go through here, so
    there is only ever one set of counters and hooks in a process.
    """
    other = sys.modules.get("envkit_bootstrap")
    if other is not None and other is not _THIS and other._S.active:
        return other
    return _THIS


def _configure(seed, level, threads, report_dir, in_run):
    first = not _S.active
    _S.seed, _S.level, _S.threads, _S.in_run = seed, level, threads, in_run
    _S.derive = level in ("strict", "warn")
    _S.process_seed = seed
    _S.counters = {}
    _S.report_dir = report_dir
    if first:
        rank = _env_rank()
        root = os.environ.get(ENV_BOOTSTRAP_ROOT)
        if rank is not None:
            role = f"rank {rank}"
        elif "--multiprocessing-fork" in sys.argv:
            role = "spawn child"
        elif root and root != str(os.getpid()):
            role = "subprocess"
        else:
            role = "main"
            os.environ[ENV_BOOTSTRAP_ROOT] = str(os.getpid())
        _S.stream = ("rank", rank) if rank is not None else ("main",)
        _S.report = _new_report(role, rank)
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)
        _S.active = True
    r = _S.report
    r.update(seed=seed, process_seed=seed, determinism=level, derived_seeds=_S.derive, threads=None)
    if threads is not None and level != "off":
        r["threads"] = threads
        for var in THREAD_ENV_VARS:  # read by OpenMP / MKL / OpenBLAS when they load, so set them now
            if os.environ.setdefault(var, str(threads)) != str(threads):
                _warn(f"{var}={os.environ[var]} from the environment differs from the pinned thread count "
                      f"{threads}; torch's intra-op threads are pinned to {threads}", stderr=_is_main())
    if _S.derive:
        # cuBLAS reads it when CUDA initialises: the image sets it; this covers seed_everything() on a host.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    r["thread_env"] = {var: os.environ.get(var) for var in THREAD_ENV_VARS}
    r["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    _check_hashseed(seed)
    if level != "off":
        _install_hooks()
    _sync_report()
    _write_report()


def _new_report(role, rank):
    return {
        "schema_version": SCHEMA_VERSION, "pid": os.getpid(), "ppid": os.getppid(), "role": role,
        "rank": rank, "worker_id": None, "seed": None, "process_seed": None, "determinism": None,
        "derived_seeds": None, "stream": None, "derived_counts": {}, "hashseed": None, "hashseed_ok": None,
        "threads": None, "thread_env": {}, "cublas_workspace_config": None, "libraries": {},
        "torch_version": None, "torch_git_version": None, "torch_cuda_version": None, "cudnn_version": None,
        "cpu_capability": None, "torch_num_threads": None, "torch_num_interop_threads": None,
        "deterministic_algorithms": None, "deterministic_warn_only": None, "cudnn_deterministic": None,
        "cudnn_benchmark": None, "cudnn_allow_tf32": None, "cuda_matmul_allow_tf32": None,
        "float32_matmul_precision": None, "cuda_initialized": None, "extensions": [], "warnings": [], "errors": [],
        "python_version": sys.version.split()[0],
    }


def _check_hashseed(seed):
    # -E / -I make the interpreter ignore PYTHONHASHSEED although it is still in os.environ.
    value = None if sys.flags.ignore_environment else os.environ.get("PYTHONHASHSEED")
    value = "random" if value in (None, "", "random") else value.strip()
    try:
        ok = int(value) == seed
    except ValueError:
        ok = False
    _S.report.update(hashseed=value, hashseed_ok=ok)
    if not ok:
        message = (f"PYTHONHASHSEED in effect is {value!r}, not the run's seed {seed}: str and bytes hashes "
                   "(set order, hash()) can differ between runs")
        _warn(message, stderr=_S.in_run and _is_main())  # seed_everything() comes too late to change it: report only


def _env_rank():
    value = os.environ.get("RANK", "").strip()
    return int(value) if value.isdigit() else None


def _current_rank():
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # noqa: BLE001 - a half-torn-down process group: fall back to the environment
        pass
    return _env_rank()


def _is_main():
    # Children inherit the environment, so a warning about it is printed once, by the job's first process.
    return _S.report["role"] == "main"


def _warn(message, stderr=True):
    if message in _S.report["warnings"]:
        return
    _S.report["warnings"].append(message)
    if stderr:
        sys.stderr.write(f"envkit: warning: {message}\n")


# --- derived seeds ---------------------------------------------------------------------------------------------------
def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*parts):
    """A 64-bit seed mixed from ints and strings (SplitMix64); stdlib only, so it costs nothing at start-up."""
    h = 0
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
            tag, n = 1 | len(data) << 2, int.from_bytes(data, "little")
        else:
            n = -1 if part is None else int(part)
            tag, n = (2, n) if n >= 0 else (3, -n)
        h = _splitmix64(h ^ tag)
        while True:
            h = _splitmix64(h ^ (n & _M64))
            n >>= 64
            if not n:
                break
    return h


def _next_derived(kind):
    count = _S.counters.get(kind, 0)
    _S.counters[kind] = count + 1
    return derive_seed(_S.seed, *_S.stream, kind, count)


def _enter_stream(stream, process_seed, role=None):
    """Become a worker (or start a pool task): new stream, counters from zero, every loaded library reseeded."""
    _S.stream, _S.counters, _S.process_seed = stream, {}, process_seed
    if role is not None:
        _S.report["role"] = role
    for name, (_, reseed) in _HOOKS.items():
        module = sys.modules.get(name)
        if reseed is not None and module is not None and getattr(module, "_envkit_patched", False):
            reseed(module)


def _seed_for(library):
    """The seed of one library: the run's seed itself, or in a worker or pool task one derived per library.

    Derived per library because random.seed(n) and numpy.random.seed([lo, hi]) fill MT19937 the same way: one
    shared seed would give the two identical streams.
    """
    seed = _S.process_seed
    return seed if seed == _S.seed else derive_seed(seed, library)


# --- import hooks ----------------------------------------------------------------------------------------------------
class _HookLoader:
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
        _run_hook(self._name, module)


class _Finder:
    """First on sys.meta_path; answers only for the hooked names, by asking the finders after it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _HOOKS:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookLoader(spec.loader, fullname)
                return spec
        return None


def _install_hooks():
    if not _S.hooks_installed:
        sys.meta_path.insert(0, _Finder())
        _S.hooks_installed = True
    for name in _HOOKS:
        module = sys.modules.get(name)
        if module is not None:  # imported before activation (another .pth, or a host process): hook it now
            _run_hook(name, module, write=False)  # _configure writes the report once, after all of them


def _run_hook(name, module, write=True):
    if not _S.active or _S.level == "off":
        return
    try:
        _HOOKS[name][0](module)
    except Exception as exc:  # noqa: BLE001 - seeding must never break the job's own import
        _warn(f"could not seed {name} ({type(exc).__name__}: {exc})")
    if write:
        _sync_report()
        _write_report()


def _hook_random(random):
    if not getattr(random, "_envkit_patched", False):
        original = random.Random.seed

        def seed(self, a=None, version=2):
            if a is None and _S.derive and not _called_from_tempfile():
                a = _next_derived("random.Random")
            return original(self, a, version)

        seed.__doc__, seed.__wrapped__ = original.__doc__, original
        random.Random.seed = seed
        random.seed = random._inst.seed  # the module-level function was bound to the old method
        random._envkit_patched = True
        # random reseeds itself from urandom in every fork child (a handler it registers on import); this one,
        # registered later, runs after it and makes that seed a derived one.
        os.register_at_fork(after_in_child=_reseed_random_in_fork_child)
    _reseed_random(random)
    _S.report["libraries"]["random"] = sys.version.split()[0]


def _called_from_tempfile():
    # tempfile draws file names from a Random() of its own: keep those unpredictable (and distinct per process).
    frame = sys._getframe(1)  # 1: Random.__init__ or whoever called seed(); tempfile sits at most two above
    for _ in range(3):
        if frame is None:
            break
        if frame.f_globals.get("__name__") == "tempfile":
            return True
        frame = frame.f_back
    return False


def _reseed_random(random):
    random.seed(_seed_for("random"))


def _reseed_random_in_fork_child():
    random = sys.modules.get("random")
    if _S.active and _S.level != "off" and random is not None:
        random.seed(_S.fork_seed)


def _hook_numpy_random(npr):
    if not getattr(npr, "_envkit_patched", False):
        original = npr.default_rng

        def default_rng(seed=None):
            if seed is None and _S.derive:
                seed = _next_derived("numpy.random.default_rng")
            return original(seed)

        default_rng.__doc__, default_rng.__wrapped__ = original.__doc__, original
        npr.default_rng = default_rng
        npr._envkit_patched = True
    _reseed_numpy(npr)
    _S.report["libraries"]["numpy"] = getattr(sys.modules.get("numpy"), "__version__", None)


def _reseed_numpy(npr):
    seed = _seed_for("numpy")
    npr.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])  # legacy seeds are 32-bit words


def _hook_torch(torch):
    torch._envkit_patched = True
    _reseed_torch(torch)  # manual_seed also queues cuda.manual_seed_all: CUDA is seeded when (if) it initialises
    level = _S.level
    if level in ("strict", "warn"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        _use_deterministic_algorithms(torch, warn_only=level == "warn")
    if _S.threads is not None:
        torch.set_num_threads(_S.threads)
    if level == "strict" and getattr(sys.excepthook, "_envkit", False) is False:
        previous = sys.excepthook

        def excepthook(kind, value, traceback):
            line = nondeterministic_op_line(value, in_run=_S.in_run)
            if line is None:
                return previous(kind, value, traceback)
            sys.stderr.write(line + "\n")
            _S.report["errors"].append(line)
            _write_report()

        excepthook._envkit = True
        sys.excepthook = excepthook
    libraries = _S.report["libraries"]
    libraries["torch"] = torch.__version__
    if torch.version.cuda:
        libraries["torch.cuda"] = torch.version.cuda
    _after_torch_seeded(torch)


def _use_deterministic_algorithms(torch, warn_only):
    """torch.use_deterministic_algorithms(True) without its price: it imports torch._inductor (over a second of
    start-up in every process) only to set one flag, which Inductor also reads from the environment when it loads.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # a torch without the private setter: pay for the public call
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        return
    os.environ["TORCHINDUCTOR_DETERMINISTIC"] = "1"
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = True
    setter(True, warn_only=warn_only)


def _reseed_torch(torch):
    torch.manual_seed(_seed_for("torch"))


def _after_torch_seeded(torch):
    """Extension point, called once per process right after torch is seeded and its flags are set.

    ``ENVKIT_TRACE`` set and nonzero: ``envkit_trace.install(torch)`` (in the image) or ``envkit.run.trace`` (on a
    host). ``ENVKIT_CPU_PROFILE=portable``: ``envkit_portable.install(torch)`` or ``envkit.run.portable_ops``. A
    missing module is skipped silently; a failing ``install`` is a warning.
    """
    if _S.extensions_done:
        return
    _S.extensions_done = True
    if os.environ.get(ENV_TRACE, "").strip() not in ("", "0"):
        _install_extension(("envkit_trace", "envkit.run.trace"), torch)
    if os.environ.get(ENV_CPU_PROFILE, "").strip() == "portable":
        _install_extension(("envkit_portable", "envkit.run.portable_ops"), torch)


def _install_extension(names, torch):
    for name in names:
        try:
            __import__(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue  # this candidate is not installed here: try the next one
            _warn(f"could not load {name} ({exc})")
            return
        try:
            sys.modules[name].install(torch)
        except Exception as exc:  # noqa: BLE001 - a broken extension must not stop the job
            _warn(f"{name}.install(torch) failed ({type(exc).__name__}: {exc})")
            return
        _S.report["extensions"].append(name)
        return


def _hook_dataloader(module):
    loader_cls = module.DataLoader
    if getattr(loader_cls, "_envkit_patched", False):
        return
    original = loader_cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if not isinstance(self.worker_init_fn, _WorkerInit):
            self.worker_init_fn = _WorkerInit(self.worker_init_fn, _current_rank())

    __init__.__doc__, __init__.__wrapped__ = original.__doc__, original
    __init__.__qualname__ = original.__qualname__
    loader_cls.__init__ = __init__
    loader_cls._envkit_patched = True


class _WorkerInit:
    """DataLoader ``worker_init_fn``: reseeds the worker from (its base seed, its rank), then runs the job's own.

    Picklable (spawn workers) as long as the job's function is; the rank is taken when the DataLoader is built.
    """

    def __init__(self, fn, rank):
        self.fn = fn
        self.rank = rank

    def __call__(self, worker_id):
        _impl()._seed_dataloader_worker(worker_id, self.rank)
        if self.fn is not None:
            self.fn(worker_id)


def _seed_dataloader_worker(worker_id, rank):
    _ensure_active()
    if not _S.active or _S.level == "off":
        return
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    base = info.seed if info is not None else worker_id  # torch's base_seed + worker_id, drawn in the parent
    rank = _current_rank() if rank is None else rank
    _S.report.update(worker_id=worker_id, rank=rank)
    role = f"dataloader worker {worker_id}" + ("" if rank is None else f" of rank {rank}")
    stream = ("dataloader", base, -1 if rank is None else rank)
    _enter_stream(stream, derive_seed(_S.seed, *stream), role)
    _sync_report()
    _write_report()


def _hook_pool(module):
    if getattr(module, "_envkit_patched", False):
        return
    module._envkit_orig_worker = module.worker
    module.worker = _pool_worker  # Pool looks the global up each time it starts a process; pickled by name
    module._envkit_patched = True


def _pool_worker(inqueue, outqueue, *args, **kwargs):
    """multiprocessing.pool's worker, reseeding before each task; threads of a ThreadPool are left alone."""
    import multiprocessing.pool
    import threading

    worker = getattr(multiprocessing.pool, "_envkit_orig_worker", None) or multiprocessing.pool.worker
    impl = _impl()
    if threading.current_thread() is threading.main_thread():  # a process, not a ThreadPool thread
        impl._ensure_active()
        if impl._S.active and impl._S.level != "off":
            impl._S.report["role"] = "pool worker"
            impl._sync_report()
            impl._write_report()
            inqueue = impl._TaskSeedingQueue(inqueue)
    return worker(inqueue, outqueue, *args, **kwargs)


class _TaskSeedingQueue:
    """The pool worker's task queue: reseeds from (job id, task index) when it hands out a task."""

    def __init__(self, queue):
        self._queue = queue

    def __getattr__(self, name):
        return getattr(self._queue, name)

    def get(self):
        task = self._queue.get()
        if isinstance(task, tuple) and len(task) == 5:  # (job, i, func, args, kwds); None ends the worker
            _enter_task(("pool", task[0], task[1] if task[1] is not None else -1), "pool worker")
        return task


def _hook_executor(module):
    executor_cls = module.ProcessPoolExecutor
    if getattr(executor_cls, "_envkit_patched", False):
        return
    original = executor_cls.submit

    def submit(self, fn, /, *args, **kwargs):
        if _S.active and _S.level != "off":
            # Numbered in the parent, in submission order: (executor, task) names the task whoever runs it.
            if getattr(self, "_envkit_index", None) is None:
                self._envkit_index, self._envkit_tasks = _S.executors, 0
                _S.executors += 1
            fn = _SeededCall(fn, ("executor", self._envkit_index, self._envkit_tasks))
            self._envkit_tasks += 1
        return original(self, fn, *args, **kwargs)

    submit.__doc__, submit.__wrapped__ = original.__doc__, original
    executor_cls.submit = submit
    executor_cls._envkit_patched = True


class _SeededCall:
    """A ProcessPoolExecutor task that reseeds the worker from its (executor, task) numbers before it runs."""

    def __init__(self, fn, stream):
        self.fn = fn
        self.stream = stream

    def __call__(self, *args, **kwargs):
        _impl()._enter_task(self.stream, "executor worker")
        return self.fn(*args, **kwargs)


def _enter_task(stream, role):
    _ensure_active()
    if _S.active and _S.level != "off":
        first = _S.report["role"] != role
        _enter_stream(tuple(stream), derive_seed(_S.seed, *stream), role)
        if first:
            _sync_report()
            _write_report()


def _ensure_active():
    """In a spawn child on a host (no .pth), activate from the environment seed_everything() left behind."""
    if not _S.active and ENV_SEED in os.environ:
        activate(in_run=False)


# name -> (hook run once the job imports the module, reseed for workers and pool tasks)
_HOOKS = {
    "random": (_hook_random, _reseed_random),
    "numpy.random": (_hook_numpy_random, _reseed_numpy),
    "torch": (_hook_torch, _reseed_torch),
    "torch.utils.data.dataloader": (_hook_dataloader, None),
    "multiprocessing.pool": (_hook_pool, None),
    "concurrent.futures.process": (_hook_executor, None),
}


# --- fork and the report ---------------------------------------------------------------------------------------------
def _before_fork():
    if _S.active:
        _S.fork_seed = _next_derived("fork")  # counted in the parent, so each child gets its own


def _after_fork_child():
    if not _S.active:
        return
    _S.report.update(pid=os.getpid(), ppid=os.getppid())
    if _S.report["role"] in ("main", "subprocess", "spawn child") or _S.report["role"].startswith("rank "):
        _S.report["role"] = "fork child"
    _write_report()


def _sync_report():
    r = _S.report
    r["process_seed"] = _S.process_seed
    r["stream"] = "/".join(str(part) for part in _S.stream)
    r["derived_counts"] = dict(_S.counters)
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch, "_envkit_patched", False):
        return
    try:
        r.update(
            torch_version=torch.__version__, torch_git_version=torch.version.git_version,
            torch_cuda_version=torch.version.cuda, cpu_capability=torch.backends.cpu.get_cpu_capability(),
            torch_num_threads=torch.get_num_threads(), torch_num_interop_threads=torch.get_num_interop_threads(),
            deterministic_algorithms=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_deterministic=bool(torch.backends.cudnn.deterministic),
            cudnn_benchmark=bool(torch.backends.cudnn.benchmark),
            cudnn_allow_tf32=bool(torch.backends.cudnn.allow_tf32),
            cuda_matmul_allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
            cuda_initialized=torch.cuda.is_initialized(),  # a plain flag: reading it does not initialise CUDA
        )
        if r["cudnn_version"] is None and torch.backends.cudnn.is_available():
            r["cudnn_version"] = torch.backends.cudnn.version()
    except Exception as exc:  # noqa: BLE001 - the report is best effort; seeding already happened
        _warn(f"could not read torch's settings for the report ({type(exc).__name__}: {exc})")


def _write_report():
    directory = _S.report_dir
    if not directory:
        return
    path = os.path.join(directory, f"bootstrap-{os.getpid()}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(_dumps(_S.report) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        _S.report_dir = None  # say it once, then stop trying
        _warn(f"cannot write the bootstrap report to {directory} ({exc.strerror or exc})")


def _dumps(value):
    """JSON for the report's plain values. Not the json module: importing it (and re) costs ~8 ms per process."""
    from _json import encode_basestring_ascii as quote

    if value is None or value is True or value is False:
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, (int, float)):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, dict):
        items = (f"{quote(str(key))}: {_dumps(value[key])}" for key in sorted(value, key=str))
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_dumps(item) for item in value) + "]"
    return quote(str(value))


_THIS = sys.modules[__name__]
