"""Library hooks: seed ``random``, numpy's global generator and torch (CPU and, lazily, CUDA), apply the determinism
level to torch, and install the in-job extensions (step trace, op trace, portable ops) once torch is seeded.

Under ``strict`` and ``warn``, unseeded ``random.Random()`` and ``numpy.random.default_rng()`` get seeds derived from
the run's seed (see :mod:`.seeds`); ``strict`` ends the process with one line when torch refuses an op that has no
deterministic implementation.
"""

import os
import sys

from . import seeds, state

# torch's message when an op has no deterministic implementation (at::Context::alertNotDeterministic).
_NONDETERMINISTIC = "does not have a deterministic implementation"


# --- random ----------------------------------------------------------------------------------------------------------
def hook_random(random):
    S = state.S
    if not getattr(random, "_envkit_patched", False):
        original = random.Random.seed

        def seed(self, a=None, version=2):
            if a is None and S.derive and not _called_from_tempfile():
                a = seeds.next_derived("random.Random")
            return original(self, a, version)

        seed.__doc__, seed.__wrapped__ = original.__doc__, original
        random.Random.seed = seed
        random.seed = random._inst.seed  # the module-level function was bound to the old method
        random._envkit_patched = True
        # random reseeds itself from urandom in every fork child (a handler it registers on import); this one,
        # registered later, runs after it and makes that seed a derived one.
        os.register_at_fork(after_in_child=_reseed_random_in_fork_child)
    reseed_random(random)
    S.report["libraries"]["random"] = sys.version.split()[0]


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


def reseed_random(random):
    random.seed(seeds.seed_for("random"))


def _reseed_random_in_fork_child():
    S = state.S
    random = sys.modules.get("random")
    if S.active and S.level != "off" and random is not None:
        random.seed(S.fork_seed)


# --- numpy -----------------------------------------------------------------------------------------------------------
def hook_numpy_random(npr):
    S = state.S
    if not getattr(npr, "_envkit_patched", False):
        original = npr.default_rng

        def default_rng(seed=None):
            if seed is None and S.derive:
                seed = seeds.next_derived("numpy.random.default_rng")
            return original(seed)

        default_rng.__doc__, default_rng.__wrapped__ = original.__doc__, original
        npr.default_rng = default_rng
        npr._envkit_patched = True
    reseed_numpy(npr)
    S.report["libraries"]["numpy"] = getattr(sys.modules.get("numpy"), "__version__", None)


def reseed_numpy(npr):
    seed = seeds.seed_for("numpy")
    npr.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])  # legacy seeds are 32-bit words


# --- torch -----------------------------------------------------------------------------------------------------------
def hook_torch(torch):
    S = state.S
    torch._envkit_patched = True
    reseed_torch(torch)  # manual_seed also queues cuda.manual_seed_all: CUDA is seeded when (if) it initialises
    level = S.level
    if level in ("strict", "warn"):
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        _use_deterministic_algorithms(torch, warn_only=level == "warn")
    if S.threads is not None:
        torch.set_num_threads(S.threads)
    if level == "strict" and getattr(sys.excepthook, "_envkit", False) is False:
        previous = sys.excepthook

        def excepthook(kind, value, traceback):
            line = nondeterministic_op_line(value, in_run=S.in_run)
            if line is None:
                return previous(kind, value, traceback)
            sys.stderr.write(line + "\n")
            S.report["errors"].append(line)
            state.write_report()

        excepthook._envkit = True
        sys.excepthook = excepthook
    libraries = S.report["libraries"]
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


def reseed_torch(torch):
    torch.manual_seed(seeds.seed_for("torch"))


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


# --- extensions ------------------------------------------------------------------------------------------------------
def _after_torch_seeded(torch):
    """Called once per process right after torch is seeded and its flags are set.

    ``ENVKIT_TRACE`` set and nonzero, or ``ENVKIT_TRACE_STEPS`` set: the step trace (:mod:`.trace`).
    ``ENVKIT_TRACE_OPS`` set: the op trace of that step (:mod:`.optrace`), after the step trace, whose hooks then
    run first and keep their own ops out of it. ``ENVKIT_CPU_PROFILE=portable``: the portable elementwise ops
    (:mod:`.portable_ops`). A failing ``install`` (a bad value among them) is a warning, never the job's end.
    """
    S = state.S
    if S.extensions_done:
        return
    S.extensions_done = True
    env = os.environ
    if env.get(state.ENV_TRACE, "").strip() not in ("", "0", "off") or env.get(state.ENV_TRACE_STEPS, "").strip():
        _install_extension("trace", torch)
    if env.get(state.ENV_TRACE_OPS, "").strip():
        _install_extension("optrace", torch)
    if os.environ.get(state.ENV_CPU_PROFILE, "").strip() == "portable":
        _install_extension("portable_ops", torch)


def _install_extension(name, torch):
    full = f"{__package__}.{name}"
    try:
        __import__(full)
        sys.modules[full].install(torch)
    except Exception as exc:  # noqa: BLE001 - a broken extension must not stop the job
        state.warn(f"{name}.install(torch) failed ({type(exc).__name__}: {exc})")
        return
    state.S.report["extensions"].append(name)
