"""The op trace's file: one per process, claimed exclusively next to the configured name, written in batches.

Part of the in-job package: the standard library only at import.
"""

import json
import os

from .trace import file_name  # one naming scheme for both traces

FORMAT_VERSION = 1
SAVED_SUFFIX = ".safetensors"
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def saved_name(trace_path, index):
    """Where op ``index``'s tensors go: ``optrace.rank1.jsonl`` -> ``optrace.rank1.op1234.safetensors``."""
    stem = trace_path[:-len(".jsonl")] if trace_path.endswith(".jsonl") else trace_path
    return f"{stem}.op{index}{SAVED_SUFFIX}"


def op_line(rec):
    """The JSON object of one op record ``(index, op, outputs, module, at, bwd, optim)``."""
    i, op, outs, module, at, bwd, optim = rec
    line = {"i": i, "op": op, "out": outs}
    if module is not None:
        line["module"] = module
    if optim is not None:
        line["optim"] = optim
    if at is not None:
        line["at"] = f"{at[0]}:{at[1]}"
    if bwd is not None:
        line["bwd"] = bwd
    return line


class OpFile:
    """One process's op trace file. Each batch of lines is one ``write`` on an ``O_APPEND`` descriptor, so a killed
    job leaves whole lines (at most the last one cut)."""

    def __init__(self, path, warn):
        self.path = path  # the configured name; the claimed one may carry a rank or a number
        self.claimed = None
        self.fd = None
        self.warn = warn

    def claim(self, rank, header):
        """Create the first free name (``optrace.jsonl``, ``optrace.1.jsonl`` ...) and write the header line.

        Raises:
            OSError: the folder cannot be made, or a thousand names are taken.
        """
        directory, base = os.path.split(self.path)
        os.makedirs(directory or ".", exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        for n in range(1000):
            path = os.path.join(directory, file_name(base, rank, n))
            try:
                self.fd = os.open(path, flags, 0o644)
            except FileExistsError:
                continue
            self.claimed = path
            self.write([header])
            return
        raise OSError(f"no free op trace file name next to {self.path}")

    def write(self, objs):
        if self.fd is None:
            return
        encode = _ENCODER.encode
        data = "".join([encode(o) + "\n" for o in objs]).encode()
        try:
            os.write(self.fd, data)
        except OSError as exc:
            self.fd = None
            self.warn(f"op trace: cannot write {self.claimed} ({exc.strerror or exc})")

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def forget(self):
        """In a forked child: the descriptor is the parent's file; never write to it."""
        self.fd = None
