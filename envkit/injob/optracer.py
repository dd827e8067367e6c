"""The op tracer of one process: the window of one step, the dispatch mode, the records.

:mod:`envkit.injob.optrace` says what is recorded and why; this module does it, with :mod:`.opframes` (where an op
comes from) and :mod:`.opfile` (the file). The standard library only at import.
"""

import contextlib
import ctypes
import json
import os
import threading
import time
import zlib

from . import opframes, state
from .opfile import FORMAT_VERSION, SAVED_SUFFIX, OpFile, file_name, op_line, saved_name  # noqa: F401
from .tensorbytes import crc32, device_digest, tensors_in, write_safetensors

DIGEST = "crc32"
DEVICE_DIGEST = "wsum64"
FLUSH_EVERY = 4096
UNINITIALISED = "uninit"  # the digest of an output of torch.empty and kin
_UNINITIALISED = ("aten::empty", "aten::new_empty")
_MASK64 = (1 << 64) - 1


class Tracer:
    """The state of one armed op trace: its window, the module stack, the records not yet written."""

    def __init__(self, torch, step, path, save, max_ops, device_everywhere):
        self.torch = torch
        self.step, self.path, self.save, self.max_ops = step, path, save, max_ops
        self.device_everywhere = device_everywhere
        self.pid = os.getpid()
        self.owner = None  # the training thread (the one that opened the window)
        self.clock = None  # id() of the optimizer whose steps are counted: the first to step
        self.steps = 0
        self.on = False  # recording
        self.started = self.done = self.failed = self.truncated = False
        self.mode = None
        self.handles, self.window_handles, self.arm_handle = [], [], None
        self.index_lock = threading.Lock()
        self.next_index = 0  # the index the next op gets
        self.count = 0  # records written
        self.pending = []
        self.flush_lock = threading.Lock()
        self.stack = []  # [(id(module), name)] of the forwards running in the owner thread
        self.names, self.keep = {}, []
        self.optim = None  # the optimizer type while its step() runs
        self.forward_of = {}  # autograd sequence number -> (module, at) of the forward op that made the node
        self.last_seq = None
        self.roots = opframes.internal_roots(torch)
        self.weights = {}
        self.dtype_names = {}
        self.op_names = {}
        self.file = OpFile(path, _warn)
        self.t_start = 0.0
        self.spent = 0.0
        autograd_c = getattr(torch._C, "_autograd", None)
        self.current_node = getattr(torch._C, "_current_autograd_node", None)
        self.sequence_nr = getattr(autograd_c, "_get_sequence_nr", None) or getattr(torch.autograd,
                                                                                     "_get_sequence_nr", None)

    # -- hooks and window --
    def arm(self):
        from torch.optim import optimizer as optim

        self.handles = [optim.register_optimizer_step_pre_hook(self._pre_step),
                        optim.register_optimizer_step_post_hook(self._post_step)]
        if self.step == 1:  # the first window opens at the first forward
            self.arm_handle = self.torch.nn.modules.module.register_module_forward_pre_hook(self._arm_forward)

    def disarm(self):
        """Remove every hook. Not from inside an optimizer hook: torch iterates them from the dict itself."""
        self._close_window()
        for handle in self.handles + ([self.arm_handle] if self.arm_handle is not None else []):
            handle.remove()
        self.handles, self.arm_handle = [], None

    def _arm_forward(self, module, _args):
        if not self.started and not self.done:
            self._open_window()
            self._push(module)  # the window's own forward hooks were not in place for this call

    def _pre_step(self, optimizer, _args, _kwargs):
        if self.clock is None:
            self.clock = id(optimizer)
        if self.step == 1 and not self.started and not self.done and id(optimizer) == self.clock:
            self._open_window()
        if self.on:
            self.optim = type(optimizer).__name__

    def _post_step(self, optimizer, _args, _kwargs):
        self.optim = None
        if id(optimizer) != self.clock or self.done:
            return
        self.steps += 1
        if self.steps == self.step - 1:
            self._open_window()
        elif self.steps >= self.step:
            self.finish(complete=self.started)  # the optimizer hooks stay (removing them here would break torch's loop)

    def _open_window(self):
        if self.started:
            return
        from torch.nn.modules import module as nn_module

        self.started, self.owner = True, threading.get_ident()
        if self.arm_handle is not None:  # module hooks are called from a copy: removing one inside a hook is safe
            self.arm_handle.remove()
            self.arm_handle = None
        try:
            self.window_handles = [nn_module.register_module_forward_pre_hook(self._push)]
            try:
                self.window_handles.append(nn_module.register_module_forward_hook(self._pop, always_call=True))
            except TypeError:  # torch < 2.0: no always_call (a forward that raises leaves the stack to be mended)
                self.window_handles.append(nn_module.register_module_forward_hook(self._pop))
            self._claim()
            self.mode = _make_mode(self.torch)(self)
            self.mode.__enter__()
        except Exception as exc:  # noqa: BLE001 - tracing must never stop the job
            self._fail(exc)
            return
        self.last_seq = self._seq()
        self.t_start = time.perf_counter()
        self.on = True

    def _close_window(self):
        self.on = False
        for handle in self.window_handles:
            handle.remove()
        self.window_handles = []
        mode, self.mode = self.mode, None
        if mode is None:
            return
        from torch.utils import _python_dispatch

        if threading.get_ident() != self.owner:
            return  # the process is ending (atexit) with the window open in another thread: that thread's state
        current = getattr(_python_dispatch, "_get_current_dispatch_mode", lambda: mode)()
        if current is mode:
            mode.__exit__(None, None, None)
        else:  # another mode was entered inside the window and is still open: ours stays below it, switched off
            _warn("op trace: a dispatch mode entered during the traced step is still active; the trace ends here")
        self.stack, self.keep, self.names = [], [], {}

    def _push(self, module, _args=None):
        if threading.get_ident() != self.owner:
            return
        name = self.names.get(id(module))
        if name is None:
            name = self._name(module)
        self.stack.append((id(module), name))

    def _pop(self, module, _args, _output):
        if threading.get_ident() != self.owner:
            return
        key = id(module)
        while self.stack:
            if self.stack.pop()[0] == key:
                break

    def _name(self, module):
        """Name a module the first time it runs: a root names its whole tree as ``state_dict`` does."""
        self.keep.append(module)  # while the window is open, no other module may take its id
        if self.stack:  # a module its caller does not register as a child
            name = f"{self.stack[-1][1]}.{type(module).__name__}"
            self.names[id(module)] = name
            return name
        root = type(module).__name__
        for sub_name, sub in module.named_modules():
            if id(sub) not in self.names:
                self.keep.append(sub)
                self.names[id(sub)] = sub_name or root
        return self.names[id(module)]

    # -- recording --
    def record(self, func, out, saved):
        t0 = time.perf_counter()
        node = self.current_node() if self.current_node is not None else None
        at = None
        if node is None:
            at = opframes.user_frame(self.roots)
            if at is opframes.LOADER:
                return
        with self.index_lock:  # device threads of the backward pass record too
            i = self.next_index
            self.next_index += 1
        if i >= self.max_ops:
            self.truncated, self.on = True, False
            return
        name = self.op_names.get(func)
        if name is None:
            name = self.op_names[func] = func.name()
        items = out if isinstance(out, (list, tuple)) else (out,)
        if name.startswith(_UNINITIALISED):  # memory as the allocator left it: its bytes mean nothing
            outs = [[UNINITIALISED, self._dtype(t), list(t.shape)] if isinstance(t, self.torch.Tensor) else None
                    for t in items]
        else:
            outs = [self._output(item) for item in items]
        # Kept as a list until the batch is written: the JSON is made there, once per batch.
        if node is None:
            owner = threading.get_ident() == self.owner
            module = self.stack[-1][1] if self.stack and owner else None
            if owner and self.sequence_nr is not None:
                self._note_nodes(module, at)
            self.pending.append((i, name, outs, module, at, None, None if module else self.optim))
        else:
            module, at = self.forward_of.get(node._sequence_nr(), (None, None))
            if at is None:
                at = opframes.user_frame(self.roots)
                at = None if at is opframes.LOADER else at
            self.pending.append((i, name, outs, module, at, node.name(), None))
        if saved is not None:
            self._save(i, name, saved, out)
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()
        self.spent += time.perf_counter() - t0  # the last batch's flush, in finish(), is not counted

    def _note_nodes(self, module, at):
        """The autograd nodes this forward op made (the sequence numbers taken since the last op) belong to it."""
        seq = self.sequence_nr()
        if seq != self.last_seq:
            first = seq - 1 if self.last_seq is None or seq - self.last_seq > 64 else self.last_seq
            for number in range(first, seq):
                self.forward_of[number] = (module, at)
            self.last_seq = seq

    def _seq(self):
        return None if self.sequence_nr is None else self.sequence_nr()

    def _output(self, item):
        torch = self.torch
        if isinstance(item, torch.Tensor):
            dtype, shape = self._dtype(item), list(item.shape)
            try:
                if item.is_cpu and not self.device_everywhere:
                    # The common case without a call: a plain contiguous real tensor, read where it lies.
                    if (type(item) is torch.Tensor and item.layout is torch.strided and not item.requires_grad
                            and not item.is_complex() and item.is_contiguous()):
                        nbytes = item.nbytes
                        if not nbytes:
                            return ["00000000", dtype, shape]
                        crc = zlib.crc32((ctypes.c_char * nbytes).from_address(item.data_ptr()))
                        return [f"{crc:08x}", dtype, shape]
                    return [crc32(item), dtype, shape]
                if item.is_meta:
                    return ["meta", dtype, shape]
                return [device_digest(torch, item, self.weights), dtype, shape]  # a tensor until flushed
            except Exception:  # noqa: BLE001 - a layout with no bytes to read (quantized, nested): say so
                return ["?", dtype, shape]
        if isinstance(item, (bool, int, float)):
            return [repr(item), type(item).__name__, None]
        return None

    def _dtype(self, tensor):
        name = self.dtype_names.get(tensor.dtype)
        if name is None:
            name = self.dtype_names[tensor.dtype] = str(tensor.dtype).replace("torch.", "")
        return name

    def inputs_to_save(self, args, kwargs):
        """An op's inputs when it is one to save: copies of its tensors (taken before it runs: it may work in place)
        and its numbers (``[[position or keyword, repr], ...]``: a Python number can carry a difference too)."""
        if self.next_index not in self.save:
            return None
        tensors = [t.detach().clone() for t in tensors_in(self.torch, list(args) + list(kwargs.values()))]
        numbers = [[key, repr(v)] for key, v in list(enumerate(args)) + list(kwargs.items())
                   if isinstance(v, (bool, int, float))]
        return tensors, numbers

    def _save(self, index, op, inputs, out):
        torch = self.torch
        tensors = [(f"input.{k}", t) for k, t in enumerate(inputs[0])]
        outs = out if isinstance(out, (list, tuple)) else (out,)
        tensors += [(f"output.{k}", t) for k, t in enumerate(tensors_in(torch, list(outs)))]
        path = saved_name(self.file.claimed or self.path, index)
        meta = {"op": op, "index": str(index), "step": str(self.step), "numbers": json.dumps(inputs[1])}
        try:
            write_safetensors(path, tensors, meta)
        except OSError as exc:
            _warn(f"op trace: cannot save op #{index} to {path} ({exc.strerror or exc})")

    # -- the file --
    def flush(self):
        """Write the records kept so far (their device digests fetched first)."""
        with self.flush_lock:
            batch, self.pending = self.pending, []
            if not batch:
                return
            self.count += len(batch)
            self._resolve(batch)
            batch.sort(key=lambda r: r[0])  # device threads may append out of order
            self.file.write([op_line(rec) for rec in batch])

    def _resolve(self, batch):
        """Fetch the device digests of a batch, all of a device in one copy."""
        torch = self.torch
        cells = [entry for rec in batch for entry in rec[2]
                 if entry is not None and isinstance(entry[0], torch.Tensor)]
        by_device = {}
        for entry in cells:
            by_device.setdefault(entry[0].device, []).append(entry)
        for entries in by_device.values():
            values = torch.stack([e[0] for e in entries]).cpu().tolist()
            for entry, value in zip(entries, values):
                entry[0] = f"{value & _MASK64:016x}"

    def _claim(self):
        self.file.claim(state.env_rank(), {
            "envkit_optrace": FORMAT_VERSION, "step": self.step,
            "digest": DEVICE_DIGEST if self.device_everywhere else DIGEST, "device_digest": DEVICE_DIGEST,
            "max_ops": self.max_ops, "save": sorted(self.save), "pid": os.getpid(), "rank": state.env_rank(),
            "torch": getattr(self.torch, "__version__", None)})

    def finish(self, complete):
        """Close the window and write what is left and the end record (once)."""
        if self.done:
            return
        self.done = True
        self._close_window()
        if not self.started and self.clock is None:
            return  # this process never trained: no file
        try:
            if self.file.claimed is None and not self.started:
                self._claim()  # the job ended before the window: an empty trace says so
            self.flush()
        except Exception as exc:  # noqa: BLE001
            _warn(f"op trace: could not write the last ops ({type(exc).__name__}: {exc})")
        window = time.perf_counter() - self.t_start if self.started else 0.0
        self.file.write([{"end": True, "ops": self.count, "complete": complete and not self.failed,
                            "truncated": self.truncated, "steps": self.steps, "window_s": round(window, 6),
                            "trace_s": round(self.spent, 6)}])
        self.file.close()

    def forked(self):
        """In a forked child (a DataLoader worker): trace nothing, write nothing, leave the inherited mode."""
        self.on, self.done = False, True  # the hooks stay and do nothing
        self.file.forget()
        self.pending = []
        mode, self.mode = self.mode, None
        if mode is not None:
            with contextlib.suppress(Exception):  # else the mode stays, switched off
                from torch.utils import _python_dispatch

                if _python_dispatch._get_current_dispatch_mode() is mode:
                    mode.__exit__(None, None, None)

    def _fail(self, exc):
        self.failed, self.on = True, False
        _warn(f"op trace stopped ({type(exc).__name__}: {exc})")


def _make_mode(torch):
    from torch.utils._python_dispatch import TorchDispatchMode

    class _OpTraceMode(TorchDispatchMode):
        def __init__(self, tracer):
            super().__init__()
            self.tracer = tracer

        @classmethod
        def _should_skip_dynamo(cls):
            # Torch wraps a mode's handler to keep torch.compile out of it (two Python calls per op); this handler
            # compiles nothing, and the wrapper was a tenth of the cost per op.
            return False

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            # Inside this method torch has taken the mode off the stack: the tracer's own ops are not traced.
            kwargs = kwargs or {}
            tracer = self.tracer
            if not tracer.on or func.namespace == "profiler":  # record_function markers: no numbers in them
                return func(*args, **kwargs)
            saved = tracer.inputs_to_save(args, kwargs) if tracer.save else None
            out = func(*args, **kwargs)
            try:
                tracer.record(func, out, saved)
            except Exception as exc:  # noqa: BLE001 - tracing must never stop the job
                tracer._fail(exc)
            return out

    return _OpTraceMode


def _warn(message):
    state.warn(message)
