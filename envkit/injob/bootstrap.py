"""The seeding bootstrap: seeds every generator of every Python process of a job, with no change to its code.

How it gets in. The image build copies the in-job package into the venv's site-packages as ``envkit_injob``, next to
``envkit-bootstrap.pth``, whose one line runs ``envkit_injob.bootstrap.activate()`` at interpreter start-up when
``ENVKIT_SEED`` is set. A ``.pth`` line rather than ``sitecustomize``: it cannot be shadowed by a ``sitecustomize``
the job or a package ships, and it costs one dictionary lookup when the variable is unset. Every interpreter of the
job runs it, because they all inherit the environment: the script, its subprocesses, spawn children (DataLoader
workers, pools), torchrun ranks. Fork children inherit the seeded state and the hooks. On a host,
``envkit.seed_everything`` reaches the same code as ``envkit.injob.bootstrap``.

How it stays cheap. :func:`activate` loads only this module, :mod:`.state` and :mod:`.importhook`, and puts a finder
first on ``sys.meta_path`` (:mod:`.importhook`); each hooked library (``random``, ``numpy.random``, ``torch``,
DataLoader, pools, executors) is seeded or patched right after the job itself first imports it (:mod:`.libraries`,
:mod:`.workers`). Nothing here imports numpy or torch.

Levels (``ENVKIT_DETERMINISM``): ``strict`` seeds, derives seeds for unseeded generators, turns torch's
deterministic algorithms and cuDNN's deterministic mode on, pins threads (``ENVKIT_THREADS``, default 1) and ends
the process with one line on an op without a deterministic implementation; ``warn`` is the same with
``warn_only=True``; ``seed`` only seeds; ``off`` only reports. The report each process writes is described in
:mod:`.state`.
"""

import os
import sys

from . import importhook, state
from .state import BootstrapError

RNG_STATE_VERSION = 1

__all__ = ["BootstrapError", "activate", "rng_state", "seed_everything", "set_rng_state"]


# --- public entry points ---------------------------------------------------------------------------------------------
def activate(*, in_run=True):
    """Configure this process from the ``ENVKIT_*`` environment (the ``.pth`` line calls this at start-up).

    Does nothing when ``ENVKIT_SEED`` is unset or the bootstrap is already active. A bad value ends the process
    with one line on stderr and exit code 2: at start-up there is no caller to raise to.
    """
    if state.S.active or state.ENV_SEED not in os.environ:
        return
    env = os.environ
    try:
        seed = state.parse_seed(env[state.ENV_SEED], state.ENV_SEED)
        level = state.parse_level(env.get(state.ENV_DETERMINISM) or state.DEFAULT_DETERMINISM,
                                  state.ENV_DETERMINISM)
        threads = env.get(state.ENV_THREADS, "").strip()
        threads = state.parse_threads(threads, state.ENV_THREADS) if threads else None
    except BootstrapError as exc:
        sys.stderr.write(f"envkit: error: {exc} (hint: fix the value given to `envkit run`)\n")
        sys.stderr.flush()
        os._exit(2)
    if threads is None and level in ("strict", "warn"):
        threads = state.DEFAULT_THREADS
    try:
        _configure(seed, level, threads, env.get(state.ENV_REPORT_DIR) or None, in_run=in_run)
    except Exception as exc:  # noqa: BLE001 - a bug here must not break every interpreter in the image
        sys.stderr.write(f"envkit: warning: the seeding bootstrap failed ({type(exc).__name__}: {exc}); "
                         "this process is NOT seeded\n")


def seed_everything(seed, determinism=state.DEFAULT_DETERMINISM, threads=None):
    """Seed random, numpy, torch (CPU and CUDA) in this process and apply a determinism level.

    Libraries not imported yet are seeded when the process first imports them. The values are also written to the
    environment, so Python children that load the bootstrap (DataLoader and pool workers) follow them.

    Args:
        seed: the run's seed, 0 <= seed < 2**32.
        determinism: ``strict``, ``warn``, ``seed`` or ``off``.
        threads: pin torch and OpenMP thread counts to this number; ``None`` leaves them as they are.

    Returns:
        The report of this process (see :mod:`.state`).

    Raises:
        BootstrapError: a bad seed, level or thread count.
    """
    seed = state.parse_seed(seed)
    level = state.parse_level(determinism)
    threads = None if threads is None else state.parse_threads(threads)
    os.environ[state.ENV_SEED] = str(seed)
    os.environ[state.ENV_DETERMINISM] = level
    if threads is not None:
        os.environ[state.ENV_THREADS] = str(threads)
    _configure(seed, level, threads, os.environ.get(state.ENV_REPORT_DIR) or None, in_run=state.S.in_run)
    return {key: value.copy() if isinstance(value, (dict, list)) else value for key, value in state.S.report.items()}


def rng_state():
    """Capture random, numpy's legacy generator, torch CPU and CUDA, and the derived-seed counters.

    Returns:
        A dict of plain Python values and CPU tensors: it goes into ``torch.save`` (and loads with
        ``weights_only=True``) or ``pickle``.
    """
    import random

    S = state.S
    captured = {"envkit_rng_state": RNG_STATE_VERSION, "random": random.getstate(),
                "numpy": None, "torch": None, "torch_cuda": None, "derived": None}
    npr = sys.modules.get("numpy.random")
    if npr is not None:
        name, keys, pos, has_gauss, cached = npr.get_state(legacy=True)
        captured["numpy"] = (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "get_rng_state"):
        captured["torch"] = torch.get_rng_state()
        if torch.cuda.is_initialized():  # never initialise CUDA just to read it
            captured["torch_cuda"] = torch.cuda.get_rng_state_all()
    if S.active:
        captured["derived"] = {"seed": S.seed, "stream": list(S.stream), "counters": dict(S.counters),
                               "process_seed": S.process_seed}
    return captured


def set_rng_state(saved):
    """Restore what :func:`rng_state` captured; the process then continues bit-identically.

    Raises:
        BootstrapError: ``saved`` is not a dict made by :func:`rng_state`.
    """
    if not isinstance(saved, dict) or saved.get("envkit_rng_state") != RNG_STATE_VERSION:
        raise BootstrapError("not a state from envkit.rng_state() (no 'envkit_rng_state': 1 key)")
    import random

    version, internal, gauss = saved["random"]
    random.setstate((version, tuple(internal), gauss))
    if saved.get("numpy") is not None:
        import numpy

        name, keys, pos, has_gauss, cached = saved["numpy"]
        numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached))
    if saved.get("torch") is not None:
        import torch

        torch.set_rng_state(saved["torch"].cpu())
        if saved.get("torch_cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in saved["torch_cuda"]])
    derived = saved.get("derived")
    S = state.S
    if derived is not None and S.active:
        S.stream = tuple(derived["stream"])
        S.counters = dict(derived["counters"])
        S.process_seed = derived["process_seed"]


# --- configuration ---------------------------------------------------------------------------------------------------
def _configure(seed, level, threads, report_dir, in_run):
    S = state.S
    first = not S.active
    S.seed, S.level, S.threads, S.in_run = seed, level, threads, in_run
    S.derive = level in ("strict", "warn")
    S.process_seed = seed
    S.counters = {}
    S.report_dir = report_dir
    if first:
        rank = state.env_rank()
        root = os.environ.get(state.ENV_BOOTSTRAP_ROOT)
        if rank is not None:
            role = f"rank {rank}"
        elif "--multiprocessing-fork" in sys.argv:
            role = "spawn child"
        elif root and root != str(os.getpid()):
            role = "subprocess"
        else:
            role = "main"
            os.environ[state.ENV_BOOTSTRAP_ROOT] = str(os.getpid())
        S.stream = ("rank", rank) if rank is not None else ("main",)
        S.report = state.new_report(role, rank)
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_child)
        S.active = True
    r = S.report
    r.update(seed=seed, process_seed=seed, determinism=level, derived_seeds=S.derive, threads=None)
    if threads is not None and level != "off":
        r["threads"] = threads
        for var in state.THREAD_ENV_VARS:  # read by OpenMP / MKL / OpenBLAS when they load, so set them now
            if os.environ.setdefault(var, str(threads)) != str(threads):
                state.warn(f"{var}={os.environ[var]} from the environment differs from the pinned thread count "
                           f"{threads}; torch's intra-op threads are pinned to {threads}", stderr=state.is_main())
    if S.derive:
        # cuBLAS reads it when CUDA initialises: the image sets it; this covers seed_everything() on a host.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    r["thread_env"] = {var: os.environ.get(var) for var in state.THREAD_ENV_VARS}
    r["cublas_workspace_config"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    _check_hashseed(seed)
    if level != "off":
        importhook.install_hooks()
    state.sync_report()
    state.write_report()


def _check_hashseed(seed):
    # -E / -I make the interpreter ignore PYTHONHASHSEED although it is still in os.environ.
    value = None if sys.flags.ignore_environment else os.environ.get("PYTHONHASHSEED")
    value = "random" if value in (None, "", "random") else value.strip()
    try:
        ok = int(value) == seed
    except ValueError:
        ok = False
    state.S.report.update(hashseed=value, hashseed_ok=ok)
    if not ok:
        message = (f"PYTHONHASHSEED in effect is {value!r}, not the run's seed {seed}: str and bytes hashes "
                   "(set order, hash()) can differ between runs")
        state.warn(message, stderr=state.S.in_run and state.is_main())  # seed_everything() comes too late


# --- fork ------------------------------------------------------------------------------------------------------------
def _before_fork():
    if state.S.active:
        from . import seeds

        state.S.fork_seed = seeds.next_derived("fork")  # counted in the parent, so each child gets its own


def _after_fork_child():
    S = state.S
    if not S.active:
        return
    S.report.update(pid=os.getpid(), ppid=os.getppid())
    if S.report["role"] in ("main", "subprocess", "spawn child") or S.report["role"].startswith("rank "):
        S.report["role"] = "fork child"
    state.write_report()
