"""Step traces: a cheap digest of every parameter every N optimizer steps, so two runs can be told apart by step.

How it gets in. The seeding bootstrap (:mod:`.libraries`) calls :func:`install` right after torch is seeded when
``ENVKIT_TRACE`` is set and not ``0``; on a host, ``envkit.injob.trace.install(torch)`` does the same. No change to the job's script: the hooks are torch's global
optimizer step hooks, which every ``torch.optim`` optimizer (and every subclass) runs.

What it records (``ENVKIT_TRACE``):

* a positive integer N: the parameters after every N-th step of each optimizer;
* ``auto``: every 2**k-th step, k growing by one whenever the time spent tracing passes 1% of the time since the
  optimizer's first step. Intervals stay powers of two, so two runs that chose different ones still share every
  step recorded at the larger interval;
* always step 0 (the parameters before the first update, taken in a pre-step hook: the initialisation) and a
  ``final`` record (when the optimizer is released or the process exits normally).

``ENVKIT_TRACE_STEPS=A-B`` adds every step from A to B (both included) to that schedule, or makes the schedule with
``ENVKIT_TRACE`` unset: the runs that pin a divergence down to its exact step (``envkit replay``, ``envkit diff
--pin``) record the bracket their originals left this way.

Step numbers count optimizer steps: step 0 is the parameters before the first ``optimizer.step()``, step k the
parameters right after the k-th. A difference first seen at step k arose in the work between the (k-1)-th and the k-th
``step()`` call (that step's forward, backward and update), which is the window an op trace of step k records.

The digest is zlib's CRC-32 of the tensor's bytes (about 5 GB/s; blake2b does 0.8). It detects a change, it does not
authenticate: two different tensors share a CRC with probability 2**-32, and a divergence shows in every later
record anyway. Gradients are recorded too when ``ENVKIT_TRACE_GRADS=1``.

Parameter names are the ones ``state_dict`` uses (``fc.weight``, ``layers.0.bias``): torch's global module and
parameter registration hooks keep a registry of live modules, and a parameter is named from the root module that
holds it. A parameter no module holds (a bare tensor given to the optimizer, a module made by ``copy.deepcopy`` or
unpickling) is named ``group{g}.param{i}``.

The file, JSON lines. ``ENVKIT_TRACE_FILE`` names it (default ``$ENVKIT_REPORT_DIR/trace.jsonl``); each process that
steps an optimizer claims its own, created exclusively on its first record: ``trace.jsonl``, or
``trace.rank{R}.jsonl`` in a torchrun rank (``RANK`` set), with ``.1``, ``.2`` ... before the suffix for further
processes (a fork child that trains, a second training subprocess). Processes that never step (DataLoader workers)
write nothing. Lines::

    {"envkit_trace": 1, "digest": "crc32", "interval": 10, "window": null, "grads": false, "pid": 7, ...}
    {"optimizer": 0, "type": "SGD", "params": [["0.weight", "float32", [8, 4]], ...]}   (again if the set changes)
    {"opt": 0, "step": 0, "params": {"0.weight": "1f0c33a2", ...}}                      (+ "grads" when asked)
    {"opt": 0, "step": 10, "params": {...}}
    {"opt": 0, "step": 357, "final": true, "interval": 10, "trace_s": 0.0123, "params": {...}}

``opt`` numbers the optimizers of a process in the order of their first step; ``step`` counts that optimizer's
``step()`` calls. The final record also carries the interval in effect at the end and ``trace_s``, the seconds
spent tracing that optimizer (the final record's own digests excluded). Each line is one ``write`` on an
``O_APPEND`` file, so a killed job leaves whole lines (at most the last one cut).

Only the standard library (and :mod:`.state` for the variable names), and torch through the argument of
:func:`install`.
"""

import contextlib
import ctypes
import json
import os
import sys
import time
import weakref
import zlib

from .state import ENV_REPORT_DIR, ENV_TRACE, ENV_TRACE_FILE, ENV_TRACE_GRADS, ENV_TRACE_STEPS, env_rank

FORMAT_VERSION = 1
DIGEST = "crc32"
AUTO = "auto"
AUTO_BUDGET = 0.01  # auto: the share of training time tracing may take (the promise is 2%; this leaves headroom)
DEFAULT_FILE_NAME = "trace.jsonl"



class _Config:
    def __init__(self, interval, path, grads, window):
        self.interval = interval  # int >= 1, AUTO, or None (the window alone)
        self.path = path
        self.grads = grads
        self.window = window  # (first, last) steps recorded whatever the interval, or None


class _Out:
    """This process's trace file, claimed on the first record (a fork child claims its own)."""

    def __init__(self):
        self.pid = None
        self.fd = None
        self.path = None
        self.broken = False


class _OptState:
    """What is known about one optimizer: its number, step count, schedule, named parameters."""

    def __init__(self, index, interval):
        self.index = index
        self.generation = _generation
        self.step = 0
        self.auto = interval == AUTO
        self.interval = 1 if self.auto else interval  # None: no periodic records (a window alone)
        self.t_start = time.perf_counter()
        self.spent = 0.0
        self.named = []  # [(name, tensor)] as of the last record; strong refs that die with the optimizer
        self.layout = None  # ids of the parameters named in the last "optimizer" line
        self.pid = None  # the process that recorded it last
        self.failed = False


_config = None
_generation = 0  # bumped by install(): optimizers of an earlier installation write nothing more
_out = _Out()
_next_index = 0  # the number the next optimizer to step gets
_states = {}  # id(optimizer) -> _OptState; an entry leaves when its optimizer is collected
_modules = {}  # id(module) -> weakref: every live module seen by a registration hook
_handles = []
_torch = None
_warned = set()


# --- public ----------------------------------------------------------------------------------------------------------
def install(torch, interval=None, path=None, grads=None, window=None):
    """Register the global optimizer step hooks and the module registry; once per process.

    Call it before the job builds its modules (the bootstrap does, right after torch is imported): parameters of
    modules built earlier are named ``group{g}.param{i}``.

    Args:
        torch: the imported torch module.
        interval: a positive step interval or ``"auto"``; default ``ENVKIT_TRACE``.
        path: the trace file; default ``ENVKIT_TRACE_FILE``, else ``$ENVKIT_REPORT_DIR/trace.jsonl``.
        grads: also digest gradients; default ``ENVKIT_TRACE_GRADS == "1"``.
        window: ``(first, last)`` or ``"first-last"``: also record every step from first to last; default
            ``ENVKIT_TRACE_STEPS``. With a window the interval may be None (or ``ENVKIT_TRACE`` unset).

    Raises:
        ValueError: a bad interval or window, or no file to write to. (The bootstrap turns this into a one-line
            warning.)
    """
    global _config, _torch, _out, _next_index, _generation
    if getattr(torch, "_envkit_trace", None) is not None:
        return  # installed already (by the in-image copy or the host copy of this package)
    env = os.environ
    if window is None:
        window = env.get(ENV_TRACE_STEPS, "").strip() or None
    window = parse_window(window) if window is not None else None
    if interval is None:
        interval = env.get(ENV_TRACE, "").strip()
        interval = None if window is not None and interval in ("", "0", "off") else interval
    interval = parse_interval(interval) if interval is not None else None
    if path is None:
        path = env.get(ENV_TRACE_FILE) or (os.path.join(env[ENV_REPORT_DIR], DEFAULT_FILE_NAME)
                                           if env.get(ENV_REPORT_DIR) else None)
    if not path:
        raise ValueError(f"no trace file: set {ENV_TRACE_FILE}")
    if grads is None:
        grads = env.get(ENV_TRACE_GRADS, "").strip() == "1"
    _config = _Config(interval, os.path.abspath(path), bool(grads), window)
    _torch = torch
    _out, _next_index, _generation = _Out(), 0, _generation + 1
    _states.clear()
    from torch.nn.modules import module as nn_module
    from torch.optim import optimizer as optim

    _handles[:] = [
        optim.register_optimizer_step_pre_hook(_pre_step),
        optim.register_optimizer_step_post_hook(_post_step),
        nn_module.register_module_module_registration_hook(_on_submodule),
        nn_module.register_module_parameter_registration_hook(_on_parameter),
    ]
    torch._envkit_trace = sys.modules[__name__]


def uninstall():
    """Remove the hooks (benchmarks); optimizers already seen write nothing more, not even a final record."""
    global _config
    for handle in _handles:
        handle.remove()
    _handles.clear()
    if _torch is not None:
        _torch._envkit_trace = None
    _config = None


def parse_interval(value):
    """``ENVKIT_TRACE``'s value as a positive int or ``"auto"``.

    Raises:
        ValueError: anything else (``0`` and ``off`` mean no trace: the caller does not install then).
    """
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    try:
        interval = int(text, 10)
    except ValueError:
        interval = 0
    if interval < 1:
        raise ValueError(f"{ENV_TRACE}={value!r} is not a positive step interval or 'auto'")
    return interval


def parse_window(value):
    """``ENVKIT_TRACE_STEPS``'s value (``"4-8"``) or a pair as ``(first, last)`` with ``0 <= first <= last``.

    Raises:
        ValueError: anything else.
    """
    try:
        first, last = (value.split("-", 1) if isinstance(value, str) else value)
        first, last = int(str(first).strip(), 10), int(str(last).strip(), 10)
    except (TypeError, ValueError):
        first = last = -1
    if not 0 <= first <= last:
        raise ValueError(f"{ENV_TRACE_STEPS}={value!r} is not a step range FIRST-LAST with 0 <= FIRST <= LAST")
    return first, last


def digest(tensor):
    """CRC-32 of a tensor's bytes as 8 hex digits (a copy to the CPU first when it lives elsewhere)."""
    t = _dense(tensor)
    if isinstance(t, str):
        return t
    if t.device.type != "cpu":
        t = t.cpu()
    return _crc(t.data_ptr(), t.numel() * t.element_size())


def digest_many(tensors, stage=False):
    """:func:`digest` of each tensor, with the copies off a GPU batched.

    Copying each parameter to the host alone costs a synchronisation per parameter; here the tensors on CUDA
    devices are copied with ``non_blocking`` into one pinned staging buffer of :data:`STAGE_BYTES`, and the
    devices synchronised once per full buffer. The digests are those :func:`digest` gives. ``stage=True`` takes
    CPU tensors through the staging path too (the tests check it against :func:`digest` on a machine without a GPU).
    """
    out = [None] * len(tensors)
    batch, used = [], 0
    for i, tensor in enumerate(tensors):
        t = _dense(tensor)
        if isinstance(t, str):
            out[i] = t
            continue
        nbytes = t.numel() * t.element_size()
        if nbytes > STAGE_BYTES or not (t.device.type == "cuda" or stage) or t.dim() == 0:
            out[i] = digest(t)
            continue
        if used + nbytes > STAGE_BYTES:
            _flush(batch, out)
            batch, used = [], 0
        batch.append((i, t, used, nbytes))
        used += nbytes
    _flush(batch, out)
    return out


STAGE_BYTES = 64 << 20
_stage = None


def _flush(batch, out):
    """Copy a batch of tensors into the staging buffer, wait for their devices once, and digest each slice."""
    global _stage
    if not batch:
        return
    torch = _torch or sys.modules["torch"]
    if _stage is None:
        pinned = torch.cuda.is_available()
        _stage = torch.empty(STAGE_BYTES, dtype=torch.uint8, pin_memory=pinned)
    devices = set()
    try:
        for _i, t, offset, nbytes in batch:
            _stage[offset:offset + nbytes].copy_(t.reshape(-1).view(torch.uint8), non_blocking=True)
            if t.device.type == "cuda":
                devices.add(t.device)
        for device in devices:
            torch.cuda.synchronize(device)
    except Exception:  # noqa: BLE001 - a dtype that cannot be viewed as bytes: one copy each, as digest() does
        for i, t, _offset, _nbytes in batch:
            out[i] = digest(t)
        return
    base = _stage.data_ptr()
    for i, _t, offset, nbytes in batch:
        out[i] = _crc(base + offset, nbytes)


def _dense(tensor):
    """The tensor as contiguous dense memory on its device, or a digest string for what has no bytes here."""
    t = tensor.detach()
    to_local = getattr(t, "to_local", None)  # a DTensor: this rank's shard
    if to_local is not None:
        t = to_local()
    if t.device.type == "meta":
        return "meta"
    if t.is_sparse:
        t = t.to_dense()
    if not t.is_contiguous():
        t = t.contiguous()
    return t


def _crc(address, nbytes):
    if nbytes == 0:
        return "00000000"
    # Read the bytes where they are: no numpy round trip (bfloat16 has no numpy dtype) and no copy.
    buffer = (ctypes.c_char * nbytes).from_address(address)
    return f"{zlib.crc32(buffer):08x}"


# --- module registry (names) -----------------------------------------------------------------------------------------
def _remember(module):
    key = id(module)
    if key not in _modules:
        _modules[key] = weakref.ref(module, lambda _ref, key=key: _modules.pop(key, None))


def _on_submodule(module, _name, submodule):
    try:
        _remember(module)
        if submodule is not None:
            _remember(submodule)
    except TypeError:  # a module that refuses weak references: it goes unnamed
        pass


def _on_parameter(module, _name, _param):
    try:
        _remember(module)
    except TypeError:
        pass


def _names(params):
    """``id(param) -> name`` for the given parameters, from the root modules that hold them."""
    wanted = {id(p) for p in params}
    live = [m for m in (ref() for ref in list(_modules.values())) if m is not None]
    children = {id(c) for m in live for c in getattr(m, "_modules", {}).values() if c is not None}
    names = {}
    for root in live:
        if id(root) in children:
            continue
        for name, p in root.named_parameters(remove_duplicate=False):
            key = id(p)
            if key in wanted and (key not in names or len(name) < len(names[key])):
                names[key] = name  # tied weights: the shortest name
    return names


# --- the hooks -------------------------------------------------------------------------------------------------------
def _pre_step(optimizer, _args, _kwargs):
    global _next_index
    if _config is None or id(optimizer) in _states:
        return None
    state = _OptState(_next_index, _config.interval)
    _next_index += 1
    _states[id(optimizer)] = state
    try:
        weakref.finalize(optimizer, _final, state, id(optimizer))
        _record(optimizer, state)  # step 0: the parameters before any update
    except Exception as exc:  # noqa: BLE001 - tracing must never stop the job
        state.failed = True
        _warn_once("step", f"step trace disabled for an optimizer ({type(exc).__name__}: {exc})")
    return None


def _post_step(optimizer, _args, _kwargs):
    state = _states.get(id(optimizer))
    if state is None or state.failed:
        return
    state.step += 1
    due = state.interval is not None and state.step % state.interval == 0
    window = _config.window
    if not due and (window is None or not window[0] <= state.step <= window[1]):
        return
    try:
        _record(optimizer, state)
    except Exception as exc:  # noqa: BLE001 - tracing must never stop the job
        state.failed = True
        _warn_once("step", f"step trace disabled for an optimizer ({type(exc).__name__}: {exc})")
        return
    if state.auto and due:
        elapsed = time.perf_counter() - state.t_start
        if state.spent > AUTO_BUDGET * elapsed:
            state.interval *= 2


def _final(state, key):
    """The optimizer was collected or the process is exiting: record what its parameters ended as."""
    _states.pop(key, None)
    # Only in the process that recorded it last: a fork child that exits normally must not write the parent's.
    if (_config is None or state.generation != _generation or state.failed or not state.named
            or state.pid != os.getpid()):
        return
    try:
        _write({"opt": state.index, "step": state.step, "final": True, "interval": state.interval,
                "trace_s": round(state.spent, 6), **_digests(state.named, _config.grads)})
    except Exception as exc:  # noqa: BLE001 - at exit there is nobody to raise to
        _warn_once("final", f"could not write the final step trace ({type(exc).__name__}: {exc})")


def _record(optimizer, state):
    t0 = time.perf_counter()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [id(p) for p in params]
    if ids != state.layout:
        names = _names(params)
        named, seen = [], set()
        for g, group in enumerate(optimizer.param_groups):
            for i, p in enumerate(group["params"]):
                name = names.get(id(p)) or f"group{g}.param{i}"
                if name in seen:
                    name = f"{name}@group{g}.param{i}"
                seen.add(name)
                named.append((name, p))
        state.named, state.layout = named, ids
        _write({"optimizer": state.index, "type": type(optimizer).__name__,
                "params": [[n, str(p.dtype).replace("torch.", ""), list(p.shape)] for n, p in named]})
    _write({"opt": state.index, "step": state.step, **_digests(state.named, _config.grads)})
    state.pid = os.getpid()
    state.spent += time.perf_counter() - t0


def _digests(named, grads):
    names = [name for name, _ in named]
    with _not_op_traced():
        out = {"params": dict(zip(names, digest_many([p for _, p in named])))}
        if grads:
            with_grad = [(name, p.grad) for name, p in named if p.grad is not None]
            found = dict(zip([n for n, _ in with_grad], digest_many([g for _, g in with_grad])))
            out["grads"] = {name: found.get(name) for name in names}
    return out


def _not_op_traced():
    """The op trace's window may be open while the step trace digests (its hooks run inside the traced step): the
    ops of the digests (``detach``, ``contiguous``) are envkit's, not the job's, and stay out of the op trace."""
    optrace = sys.modules.get(f"{__package__}.optrace")
    return optrace.suspended() if optrace is not None else contextlib.nullcontext()


# --- the file --------------------------------------------------------------------------------------------------------
def file_name(base, rank=None, n=0):
    """A process's trace file: ``trace.jsonl``, ``trace.rank1.jsonl``, ``trace.2.jsonl``, ``trace.rank1.2.jsonl``."""
    stem, dot, suffix = base.rpartition(".")
    if not dot:
        stem, suffix = base, ""
    parts = [stem] + ([f"rank{rank}"] if rank is not None else []) + ([str(n)] if n else []) + ([suffix] if dot else [])
    return ".".join(parts)


def _claim():
    directory, base = os.path.split(_config.path)
    os.makedirs(directory or ".", exist_ok=True)
    rank = env_rank()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    for n in range(1000):
        path = os.path.join(directory, file_name(base, rank, n))
        try:
            fd = os.open(path, flags, 0o644)
        except FileExistsError:
            continue
        _out.pid, _out.fd, _out.path = os.getpid(), fd, path
        torch_version = getattr(_torch, "__version__", None)
        _write({"envkit_trace": FORMAT_VERSION, "digest": DIGEST, "interval": _config.interval,
                "window": list(_config.window) if _config.window else None, "grads": _config.grads, "pid": os.getpid(), "rank": rank, "torch": torch_version})
        return
    raise OSError(f"no free trace file name next to {_config.path}")


def _write(obj):
    if _out.broken:
        return
    if _out.pid != os.getpid():  # first record of this process (or of a fork child)
        _out.pid = _out.fd = None
        try:
            _claim()
        except OSError as exc:
            _out.broken = True
            _warn_once("file", f"cannot write the step trace next to {_config.path} ({exc.strerror or exc})")
            return
    os.write(_out.fd, (json.dumps(obj, separators=(",", ":")) + "\n").encode())


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        sys.stderr.write(f"envkit: warning: {message}\n")
