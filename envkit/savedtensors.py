"""The tensors the op tracer's second pass saves (``optrace.op{index}.safetensors``), read and compared with the
standard library alone: the host need not have torch.

:func:`saved_diffs` compares one op's saved inputs and outputs between two runs: how many elements differ in their
bits, and the largest absolute difference among them.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import TraceError

_MAX_HEADER = 100 * 2**20  # a safetensors header longer than this is not one of ours

# safetensors dtype -> (struct format of the value, struct format of its bits); None: no value decoding (bfloat16
# is decoded from its bits)
_FORMATS = {"F64": ("d", "Q"), "F32": ("f", "I"), "F16": ("e", "H"), "BF16": (None, "H"), "I64": ("q", "Q"),
            "I32": ("i", "I"), "I16": ("h", "H"), "I8": ("b", "B"), "U8": ("B", "B"), "BOOL": ("B", "B")}


@dataclass(frozen=True)
class TensorDiff:
    """How one saved tensor of an op differs between the runs."""

    name: str  # input.0, output.1 ...
    dtype: str
    shape: tuple[int, ...]
    elements: int
    differ: int  # elements whose bits differ
    max_abs_diff: float | None  # over the differing elements that are finite on both sides; None: no number


def read_safetensors(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...], bytes]], dict[str, str]]:
    """``(name -> (dtype, shape, raw bytes), metadata)`` of a safetensors file, checked against its own header.

    Raises:
        TraceError: not a safetensors file, or one whose header does not match its data.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"cannot read {path} ({exc.strerror or exc})") from exc
    bad = TraceError(f"{path} is not a tensor file saved by the op tracer", hint="trace the step again with save")
    if len(data) < 8:
        raise bad
    size = int.from_bytes(data[:8], "little")
    if size > min(_MAX_HEADER, len(data) - 8):
        raise bad
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    body = data[8 + size:]
    out = {}
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise bad
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = str(info["dtype"]), tuple(int(n) for n in info["shape"]), info["data_offsets"]
            width = struct.calcsize("<" + _FORMATS[dtype][1])
        except (KeyError, TypeError, ValueError):
            raise bad from None
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(body)) or any(
                n < 0 for n in shape) or (end - start) != math.prod(shape) * width:
            raise bad
        out[str(name)] = (dtype, shape, body[start:end])
    return out, {str(k): str(v) for k, v in metadata.items()}


def tensor_diff(name: str, a: tuple[str, tuple[int, ...], bytes], b: tuple[str, tuple[int, ...], bytes]) -> TensorDiff:
    """Elements whose bits differ and the largest absolute difference between two saved tensors of one shape."""
    dtype, shape, raw_a = a
    raw_b = b[2]
    value_fmt, bits_fmt = _FORMATS[dtype]
    n = math.prod(shape)
    bits_a = struct.unpack(f"<{n}{bits_fmt}", raw_a)
    bits_b = struct.unpack(f"<{n}{bits_fmt}", raw_b)
    differing = [k for k, (x, y) in enumerate(zip(bits_a, bits_b)) if x != y]
    if not differing:
        return TensorDiff(name, dtype, shape, n, 0, 0.0)
    values_a = _values(dtype, value_fmt, n, raw_a, bits_a)
    values_b = _values(dtype, value_fmt, n, raw_b, bits_b)
    finite = [abs(values_a[k] - values_b[k]) for k in differing
              if math.isfinite(values_a[k]) and math.isfinite(values_b[k])]
    return TensorDiff(name, dtype, shape, n, len(differing), max(finite) if finite else None)


def _values(dtype: str, value_fmt: str | None, n: int, raw: bytes, bits: tuple[int, ...]) -> tuple[float, ...]:
    if value_fmt is not None:
        return struct.unpack(f"<{n}{value_fmt}", raw)
    # bfloat16 is the top half of a float32
    return struct.unpack(f"<{n}f", struct.pack(f"<{n}I", *(b << 16 for b in bits)))


def saved_diffs(path_a: Path, path_b: Path) -> tuple[list[TensorDiff], list[tuple[str, str, str]]]:
    """The saved tensors of one op in two runs, compared, and the numbers it was given that differ.

    Returns:
        Every tensor both files hold with the same dtype and shape, compared; and ``(argument, value in A, value in
        B)`` for each number argument that differs.

    Raises:
        TraceError: a file is unreadable or not a safetensors file.
    """
    (a, meta_a), (b, meta_b) = read_safetensors(path_a), read_safetensors(path_b)
    tensors = [tensor_diff(name, a[name], b[name]) for name in sorted(set(a) & set(b), key=_tensor_order)
               if a[name][:2] == b[name][:2]]
    try:
        numbers_a = {str(k): str(v) for k, v in json.loads(meta_a.get("numbers", "[]"))}
        numbers_b = {str(k): str(v) for k, v in json.loads(meta_b.get("numbers", "[]"))}
    except (ValueError, TypeError):
        raise TraceError(f"{path_a} or {path_b} is not a tensor file saved by the op tracer") from None
    numbers = [(k, numbers_a[k], numbers_b[k]) for k in numbers_a if k in numbers_b and numbers_a[k] != numbers_b[k]]
    return tensors, numbers


def _tensor_order(name: str) -> tuple[str, int]:
    kind, _, number = name.partition(".")
    return (kind, int(number) if number.isdigit() else 0)
