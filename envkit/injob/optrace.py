"""Op traces: every ATen op of one training step, in order, with a digest of its outputs, so two runs can be told
apart by op.

How it gets in. The in-job package (this module, :mod:`.optracer`, :mod:`.opframes`, :mod:`.opfile`,
:mod:`.tensorbytes`) is copied into the image; the bootstrap calls :func:`install` once torch is imported when
``ENVKIT_TRACE_OPS`` names a step (``envkit run --trace ops:STEP`` sets it). On a host,
``envkit.injob.optrace.install(torch, step=3)`` does the same. No change to the job's script: everything hangs on
torch's global optimizer step hooks and global module forward hooks, and the ops are seen through a
``TorchDispatchMode``.

Which ops. Steps count as in the step trace: step 0 is the parameters before the first ``optimizer.step()``, step k
the parameters after the k-th. Tracing step k records the work that makes step k's parameters: every op from the
return of the (k-1)-th ``optimizer.step()`` to the return of the k-th (data handling, forward, backward, the update).
For step 1 the window opens at the first module forward call (or the first ``optimizer.step()``, whichever comes
first), not at install, so model building and data generation stay out. The clock is the first optimizer to step.

Threads and processes. The dispatch mode lives in torch's thread-local state. The training thread enters it (from the
optimizer hook) and leaves it at the end of the window. Autograd copies the caller's thread-local state, modes
included, into the threads that run the backward pass. On the CPU that is the calling thread itself; on CUDA it is a
device thread. So every backward op is seen, in the order the engine runs it. (With ops on two devices, the threads'
interleaving can change from run to run.) Python threads the job starts are not traced: a thread starts with no mode.
A forked child traces nothing and writes nothing: a DataLoader worker forked inside the window inherits the mode, and a
fork handler turns it off. (Processes started by exec or spawn, such as torchrun's ranks, install their own.) Ops
that torch.utils.data runs in the training process (a batch rebuilt from a worker's shared memory, the loader's seed,
collation without workers) are not recorded: where they fall depends on when workers deliver, and the data they carry
shows in the first op that reads it.

What is recorded per op (JSON lines, one file per process named like the step trace's: ``optrace.jsonl``,
``optrace.rank{R}.jsonl``, ``optrace.2.jsonl``)::

    {"envkit_optrace": 1, "step": 3, "digest": "crc32", "device_digest": "wsum64", "pid": 7, "rank": null, ...}
    {"i": 0, "op": "aten::addmm", "out": [["1f0c33a2", "float32", [64, 128]]], "module": "encoder.0", "at": "t.py:57"}
    {"i": 9, "op": "aten::mm", "out": [...], "module": "encoder.0", "at": "t.py:57", "bwd": "AddmmBackward0"}
    {"i": 20, "op": "aten::add_.Tensor", "out": [...], "optim": "SGD", "at": "t.py:63"}
    {"end": true, "ops": 21, "complete": true, "truncated": false, "steps": 3, "window_s": 0.01, "trace_s": 0.004}

``op`` is the overload's name (``aten::add.Tensor``; the default overload has no suffix). ``out`` holds one entry per
output: ``[digest, dtype, shape]`` for a tensor, ``[str(value), type, null]`` for a number, ``null`` otherwise. The
outputs of ``aten::empty`` and kin are memory as the allocator left it: their digest is ``"uninit"``.
``module`` is the innermost module whose forward is running, named as ``state_dict`` names it, the root by its
class name. ``at`` is the innermost frame outside torch, the standard library and envkit. A backward op carries
``bwd``, the autograd node that ran it, and the module and frame of the forward op that made that node (found through
the node's sequence number); ops inside ``optimizer.step()`` carry ``optim``.

The digest: for a CPU tensor zlib's CRC-32 of its bytes, as the step trace takes it. For a tensor on another device
no copy is made: ``wsum64`` is the sum of its 32-bit words (its bytes when their count is not a multiple of 4), each
times a fixed odd weight, in int64 arithmetic that wraps. Integer sums do not depend on the order of the reduction, so
the digest is deterministic. It is computed on the device, kept there, and fetched for thousands of ops at a time, so
tracing does not wait for the device after each op. It detects a change; it is not a checksum against an adversary.

Cost. Tracing a step costs the Python dispatch of every op plus a digest of every output; outside the window nothing
is installed but the optimizer hooks (and, for step 1, a forward pre-hook until the first forward). A window stops
recording after ``max_ops`` ops (``ENVKIT_TRACE_OPS_MAX``, default 500000) and says so in its end record. Records are
written every 4096 ops, each batch in one ``write`` on an ``O_APPEND`` file.

A second pass. ``save`` (``ENVKIT_TRACE_OPS_SAVE=1234,1240``) also writes the inputs and outputs of those ops as
``optrace.op1234.safetensors`` beside the trace (tensors ``input.0``, ``output.0`` ...), which ``envkit.optdiff``
reads without torch to count the differing elements. A first pass cannot know which op will differ, so the caller runs
the step again with the op index it found.

Self-contained: only the standard library at import (and the package's own modules), torch through the argument of
:func:`install`.
"""

import atexit
import contextlib
import os

from .optracer import (  # noqa: F401 - the names the host side reads traces by
    DEVICE_DIGEST,
    DIGEST,
    FORMAT_VERSION,
    SAVED_SUFFIX,
    UNINITIALISED,
    Tracer,
    file_name,
    saved_name,
)
from .state import ENV_REPORT_DIR
from .state import ENV_TRACE_OPS as ENV_OPS  # the step to trace, a positive integer
from .state import ENV_TRACE_OPS_FILE as ENV_OPS_FILE  # default $ENVKIT_REPORT_DIR/optrace.jsonl
from .state import ENV_TRACE_OPS_MAX as ENV_OPS_MAX
from .state import ENV_TRACE_OPS_SAVE as ENV_OPS_SAVE  # op indices whose inputs and outputs to save: "12,40"
from .tensorbytes import crc32, device_digest, write_safetensors  # noqa: F401

DEFAULT_FILE_NAME = "optrace.jsonl"
DEFAULT_MAX_OPS = 500000

_tracer = None
_fork_handler_registered = False


# --- public ----------------------------------------------------------------------------------------------------------
def install(torch, step=None, path=None, save=None, max_ops=None, digest=None):
    """Arm the op trace of one step in this process; once per process (a second call replaces the first).

    Args:
        torch: the imported torch module.
        step: the step to trace (>= 1); default ``ENVKIT_TRACE_OPS``.
        path: the trace file; default ``ENVKIT_TRACE_OPS_FILE``, else ``$ENVKIT_REPORT_DIR/optrace.jsonl``.
        save: op indices whose inputs and outputs to save; default ``ENVKIT_TRACE_OPS_SAVE``.
        max_ops: stop recording after this many ops; default ``ENVKIT_TRACE_OPS_MAX``, else 500000.
        digest: ``"auto"`` (CRC-32 on the CPU, wsum64 elsewhere) or ``"wsum64"`` everywhere (tests the device path
            on a CPU).

    Raises:
        ValueError: a bad step, op list or limit, or no file to write to. (The bootstrap turns this into a warning.)
    """
    global _tracer, _fork_handler_registered
    env = os.environ
    step = parse_step(env.get(ENV_OPS, "") if step is None else step)
    save = parse_ops(env.get(ENV_OPS_SAVE, "") if save is None else save)
    max_ops = parse_step(env.get(ENV_OPS_MAX) or DEFAULT_MAX_OPS if max_ops is None else max_ops, ENV_OPS_MAX)
    if path is None:
        path = env.get(ENV_OPS_FILE) or (os.path.join(env[ENV_REPORT_DIR], DEFAULT_FILE_NAME)
                                         if env.get(ENV_REPORT_DIR) else None)
    if not path:
        raise ValueError(f"no op trace file: set {ENV_OPS_FILE}")
    if digest not in (None, "auto", DEVICE_DIGEST):
        raise ValueError(f"unknown digest {digest!r}")
    uninstall()
    _tracer = Tracer(torch, step, os.path.abspath(path), save, max_ops, digest == DEVICE_DIGEST)
    _tracer.arm()
    if not _fork_handler_registered:
        os.register_at_fork(after_in_child=_after_fork_in_child)
        atexit.register(_at_exit)
        _fork_handler_registered = True


def uninstall():
    """Remove every hook and leave the mode; what was recorded is written. For tests and benchmarks."""
    global _tracer
    if _tracer is not None:
        _tracer.finish(complete=False)
        _tracer.disarm()
    _tracer = None


@contextlib.contextmanager
def suspended():
    """Ops run inside this block are not recorded (envkit's own work inside the window: the step trace's digests)."""
    tracer = _tracer
    if tracer is None or not tracer.on:
        yield
        return
    tracer.on = False
    try:
        yield
    finally:
        tracer.on = True


def parse_step(value, name=ENV_OPS):
    """A positive integer from a string or int.

    Raises:
        ValueError: anything else.
    """
    try:
        number = int(str(value).strip(), 10)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{name}={value!r} is not a positive integer")
    return number


def parse_ops(value):
    """Op indices from ``"12,40"`` or an iterable of ints, as a frozenset.

    Raises:
        ValueError: an index that is not a non-negative integer.
    """
    items = [s for s in str(value).replace(" ", "").split(",") if s] if isinstance(value, str) else list(value)
    out = set()
    for item in items:
        try:
            index = int(item)
        except (TypeError, ValueError):
            index = -1
        if index < 0:
            raise ValueError(f"{ENV_OPS_SAVE}: {item!r} is not an op index")
        out.add(index)
    return frozenset(out)


# --- process-wide ----------------------------------------------------------------------------------------------------
def _after_fork_in_child():
    if _tracer is not None:
        _tracer.forked()


def _at_exit():
    tracer = _tracer
    if tracer is not None and tracer.pid == os.getpid():
        tracer.finish(complete=False)
