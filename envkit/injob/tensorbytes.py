"""A tensor's bytes, read without a copy where they lie: the op trace's digests and its safetensors writer.

Part of the in-job package: the standard library only at import; torch comes in with the tensors.
"""

import ctypes
import json
import os
import zlib

_CHUNK = 1 << 22  # words per device-digest chunk: bounds the temporaries to 64 MiB
_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
                       "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def crc32(tensor):
    """CRC-32 of a CPU tensor's bytes as 8 hex digits (as the step trace takes it)."""
    t = plain(tensor)
    if t.device.type == "meta":
        return "meta"
    if t.device.type != "cpu":
        t = t.cpu()
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return "00000000"
    # Read the bytes where they are: no numpy round trip (bfloat16 has no numpy dtype) and no copy.
    return f"{zlib.crc32((ctypes.c_char * nbytes).from_address(t.data_ptr())):08x}"


def device_digest(torch, tensor, weights=None):
    """The wsum64 digest of a tensor as a 0-dim int64 tensor on its device (no synchronisation).

    Args:
        torch: the torch module.
        tensor: any strided tensor.
        weights: a cache dict (device -> weight vector) reused across calls.
    """
    t = plain(tensor)
    flat = t.reshape(-1).view(torch.uint8)
    words = flat.view(torch.int32) if flat.numel() % 4 == 0 else flat
    n = words.numel()
    w = _weights(torch, t.device, min(n, _CHUNK), {} if weights is None else weights)
    total = torch.zeros((), dtype=torch.int64, device=t.device) + n
    for c, start in enumerate(range(0, n, _CHUNK)):
        part = words[start:start + _CHUNK].to(torch.int64)
        total = total + (part * w[:part.numel()]).sum() * (2 * c + 1)
    return total


def _weights(torch, device, n, cache):
    w = cache.get(device)
    if w is None or w.numel() < n:
        # Odd weights below 2**32 (Knuth's multiplicative hash of the position): word times weight fits in int64.
        index = torch.arange(max(n, 1024), dtype=torch.int64, device=device)
        w = cache[device] = (index * 2654435761) % (1 << 31) * 2 + 1
    return w


def plain(tensor):
    """The tensor as plain contiguous strided memory: a DTensor's local shard, sparse made dense, views resolved."""
    t = tensor.detach() if tensor.requires_grad else tensor
    to_local = getattr(t, "to_local", None)
    if to_local is not None:
        t = to_local()
    if t.is_sparse:
        t = t.to_dense()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t if t.is_contiguous() else t.contiguous()


def tensors_in(torch, items):
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(t for t in item if isinstance(t, torch.Tensor))
    return out


def write_safetensors(path, named, metadata):
    """Tensors in the safetensors format (8-byte header length, JSON header, raw little-endian bytes).

    Written by hand: the image need not have the safetensors package, and the host reads it with the standard
    library. Tensors of a dtype safetensors has no name for are listed in the metadata under ``skipped``.
    """
    header, blobs, offset, skipped = {}, [], 0, []
    for name, tensor in named:
        code = _SAFETENSORS_DTYPES.get(str(tensor.dtype).replace("torch.", ""))
        if code is None:
            skipped.append(name)
            continue
        t = plain(tensor).cpu()
        nbytes = t.numel() * t.element_size()
        blob = bytes((ctypes.c_char * nbytes).from_address(t.data_ptr())) if nbytes else b""
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        blobs.append(blob)
        offset += nbytes
    header["__metadata__"] = dict(metadata, skipped=",".join(skipped))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)
