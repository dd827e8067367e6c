"""Compare tensor files inside the job's image (which has torch/numpy; the host may not).

    python tensordiff.py A B          -> one JSON object on stdout

Reads torch.save files (.pt, .pth, .ckpt: a tensor, or nested dicts/lists of tensors), safetensors and .npy, and
reports which tensors differ and their max absolute difference. Standard library only at module top: it runs in the
image's interpreter without envkit installed.
"""

import json
import sys


def _load(path):
    lower = path.lower()
    if lower.endswith(".npy"):
        import numpy

        return {"": numpy.load(path, allow_pickle=False)}
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    flat = {}
    _flatten(obj, "", flat)
    return flat


def _flatten(obj, prefix, out):
    if hasattr(obj, "detach") and hasattr(obj, "shape"):
        out[prefix] = obj.detach().cpu().numpy()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}[{i}]", out)


def compare(path_a, path_b):
    a, b = _load(path_a), _load(path_b)
    tensors = []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            tensors.append({"name": name or "(array)", "only_in": "original" if name in a else "replay"})
            continue
        x, y = a[name], b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            tensors.append({"name": name or "(array)", "shape": [list(x.shape), list(y.shape)],
                            "dtype": [str(x.dtype), str(y.dtype)]})
            continue
        if x.tobytes() == y.tobytes():
            continue
        import numpy

        xd, yd = x.astype(numpy.float64), y.astype(numpy.float64)
        diff = numpy.abs(xd - yd)
        tensors.append({"name": name or "(array)", "max_abs_diff": float(numpy.nanmax(diff)) if diff.size else 0.0,
                        "elements_differing": int((x != y).sum()), "elements": int(x.size)})
    return {"tensors": tensors, "count": len(set(a) | set(b))}


def main(argv):
    try:
        result = compare(argv[1], argv[2])
    except Exception as exc:  # noqa: BLE001 - a file that is not a tensor file: say so, do not fail the replay
        result = {"error": "%s: %s" % (type(exc).__name__, str(exc)[:300])}
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")  # a final line without a newline can be lost by the log driver
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
