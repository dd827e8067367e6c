"""Compare ``ops_probe.py`` outputs from several CPUs or settings, and each against an exact reference.

    python benchmarks/portable/ops_compare.py LABEL=FILE.pt LABEL=FILE.pt ... [--ops sqrt,exp,...]

For every op the table shows, per file, how many float32 elements differ from the reference (and the largest distance
in units in the last place), then whether each file's bits equal the first file's. The reference is the op's
mathematical value computed in float64 (numpy/scipy, i.e. glibc) and rounded once to float32; where a CPU's element
disagrees with it, the element is recomputed with mpmath at 60 digits so that a float64 near-tie cannot blame the CPU.
For composite ops (softmax, LayerNorm, Adam, ...) the reference is the float64 value of the formula: a few ulps of
distance are the algorithm's own rounding and say nothing about the CPU; only the cross-CPU columns matter there.
"""

from __future__ import annotations

import math
import sys

import mpmath
import numpy as np
import scipy.special as sp
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from ops_probe import SWEEP, inputs  # noqa: E402  (same folder, run as a script)

mpmath.mp.dps = 60
MPMATH_CAP = 4000  # elements re-checked with mpmath per op; beyond that the float64 reference stands


def _softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


UNARY_REF = {
    # name -> (input key, float64 function, mpmath function or None)
    "sqrt": ("pos", np.sqrt, mpmath.sqrt),
    "rsqrt": ("pos", lambda x: 1 / np.sqrt(x), lambda v: 1 / mpmath.sqrt(v)),
    "reciprocal": ("pos", lambda x: 1 / x, lambda v: 1 / v),
    "pow_0.5": ("pos", np.sqrt, mpmath.sqrt),
    "pow_-0.5": ("pos", lambda x: 1 / np.sqrt(x), lambda v: 1 / mpmath.sqrt(v)),
    "pow_1.5": ("pos", lambda x: x**1.5, lambda v: v ** mpmath.mpf(1.5)),
    "pow_2": ("pos", lambda x: x * x, lambda v: v * v),
    "pow_0.3": ("pos", lambda x: x ** np.float64(np.float32(0.3)), lambda v: v ** mpmath.mpf(float(np.float32(0.3)))),
    "log": ("pos", np.log, mpmath.log),
    "log2": ("pos", np.log2, lambda v: mpmath.log(v, 2)),
    "log10": ("pos", np.log10, mpmath.log10),
    "log1p": ("pos", np.log1p, mpmath.log1p),
    "exp": ("sym", np.exp, mpmath.exp),
    "exp2": ("sym", np.exp2, lambda v: mpmath.power(2, v)),
    "expm1": ("sym", np.expm1, mpmath.expm1),
    "tanh": ("sym", np.tanh, mpmath.tanh),
    "sigmoid": ("sym", sp.expit, lambda v: 1 / (1 + mpmath.exp(-v))),
    "erf": ("small", sp.erf, mpmath.erf),
    "erfc": ("small", sp.erfc, mpmath.erfc),
    "erfinv": ("unit", sp.erfinv, mpmath.erfinv),
    "sin": ("sym", np.sin, mpmath.sin),
    "cos": ("sym", np.cos, mpmath.cos),
    "tan": ("unit", np.tan, mpmath.tan),
    "atan": ("sym", np.arctan, mpmath.atan),
    "asin": ("unit", np.arcsin, mpmath.asin),
    "acos": ("unit", np.arccos, mpmath.acos),
    "sinh": ("small", np.sinh, mpmath.sinh),
    "cosh": ("small", np.cosh, mpmath.cosh),
    "atanh": ("unit", np.arctanh, mpmath.atanh),
    "trunc": ("sym", np.trunc, None),
    "gelu": ("sym", lambda x: 0.5 * x * (1 + sp.erf(x / math.sqrt(2))), None),
    "gelu_tanh": (
        "sym",
        lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        None,
    ),
    "silu": ("sym", lambda x: x * sp.expit(x), None),
    "softplus": ("sym", _softplus, None),
    "elu": ("sym", lambda x: np.where(x > 0, x, np.expm1(x)), None),
    "logsigmoid": ("sym", lambda x: -_softplus(-x), None),
    "sqrt_noncontig": ("pos", lambda x: np.sqrt(x[::2]), None),
    "exp_noncontig": ("sym", lambda x: np.exp(x[::2]), None),
    "sqrt_f64_round": ("pos", np.sqrt, mpmath.sqrt),
    "foreach_sqrt": ("pos", np.sqrt, mpmath.sqrt),
    "foreach_exp": ("sym", np.exp, mpmath.exp),
}


def _adam_ref(x: dict[str, np.ndarray], steps: int = 3) -> np.ndarray:
    p = x["small"].copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    b1, b2, lr, eps = 0.9, 0.999, 1e-3, 1e-8
    for step in range(1, steps + 1):
        g = x["grad"] * step
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr / (1 - b1**step) * m / (np.sqrt(v) / math.sqrt(1 - b2**step) + eps)
    return p


def other_refs(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pos, sym, small, grad = x["pos"], x["sym"], x["small"], x["grad"]
    row = small.reshape(128, 256)
    e = np.exp(row - row.max(axis=1, keepdims=True))
    softmax = e / e.sum(axis=1, keepdims=True)
    a = small[: 64 * 512].reshape(64, 512)
    b = sym[: 512 * 64].reshape(512, 64)
    img = torch.from_numpy(small[: 2 * 3 * 32 * 32].reshape(2, 3, 32, 32))
    w = torch.from_numpy(x["unit"][: 8 * 3 * 3 * 3].reshape(8, 3, 3, 3))
    mu = row.mean(axis=1, keepdims=True)
    g32 = grad.astype(np.float32).astype(np.float64)
    refs = {
        "div": pos / sym,
        "mul": pos * sym,
        "add": pos + sym,
        "pow_tensor": pos**small,
        "atan2": np.arctan2(sym, small),
        "hypot": np.hypot(sym, small),
        "addcdiv": pos - 0.001 * sym / pos,
        "addcmul": pos + 0.001 * sym * small,
        "lerp": pos + 0.1 * (sym - pos),
        "foreach_addcdiv": pos - 0.001 * sym / pos,
        "foreach_addcmul": pos + 0.001 * sym * small,
        "foreach_lerp": pos + 0.1 * (sym - pos),
        "sum": np.array([sym.sum()]),
        "mean_rows": row.mean(axis=1),
        "var_rows": row.var(axis=1, ddof=1),
        "norm": np.array([np.sqrt((sym * sym).sum())]),
        "cumsum": np.cumsum(small),
        "softmax": softmax.flatten(),
        "log_softmax": np.log(softmax).flatten(),
        "logsumexp": np.log(np.exp(row).sum(axis=1)),
        "layer_norm": ((row - mu) / np.sqrt(row.var(axis=1, keepdims=True) + 1e-5)).flatten(),
        "adam_denom": np.sqrt((g32 * g32).astype(np.float32).astype(np.float64)) / math.sqrt(1 - 0.999**3) + 1e-8,
        "matmul": (a @ b).flatten(),
        "conv2d": torch.nn.functional.conv2d(img, w, padding=1).flatten().numpy(),
    }
    for impl in ("forloop", "foreach", "fused"):
        refs[f"adam_{impl}"] = _adam_ref(x)
    for n in SWEEP:
        refs[f"sweep_sqrt_{n}"] = np.sqrt(pos[:n])
        refs[f"sweep_exp_{n}"] = np.exp(sym[:n])
    return refs


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 steps between two float32 arrays (via the ordered integer view)."""
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    bits = np.int64 if a.dtype == np.float64 else np.int32
    return (a.view(bits) == b.view(bits)) | (np.isnan(a) & np.isnan(b))


def check(name: str, got: np.ndarray, ref64: np.ndarray, mp_fn, inp: np.ndarray | None) -> tuple[int, int]:
    """(elements that differ from the correctly rounded value, largest ulp distance)."""
    ref = ref64.astype(np.float32)
    bad = ~_same(got, ref)
    if mp_fn is not None and inp is not None and bad.any():
        idx = np.flatnonzero(bad)[:MPMATH_CAP]
        for i in idx:
            exact = mp_fn(mpmath.mpf(float(inp[i])))
            ref[i] = np.float32(float(exact)) if abs(exact) < 1e300 else np.float32(np.inf)
            # float(mpf) rounds to float64: re-round from 60 digits straight to float32 where a tie could hide
            lo, hi = np.nextafter(ref[i], np.float32(-np.inf)), np.nextafter(ref[i], np.float32(np.inf))
            cand = min((lo, ref[i], hi), key=lambda c: abs(mpmath.mpf(float(c)) - exact))
            ref[i] = cand
        bad = ~_same(got, ref)
    finite = np.isfinite(got) & np.isfinite(ref)
    dist = ulp_distance(got[finite], ref[finite])
    return int(bad.sum()), int(dist.max()) if dist.size else 0


def main(argv: list[str]) -> int:
    if not argv or any(a.startswith("-") and not a.startswith("--ops=") for a in argv):
        print(__doc__)
        return 2
    only = None
    files = []
    for arg in argv:
        if arg.startswith("--ops="):
            only = set(arg[6:].split(","))
        else:
            label, _, path = arg.partition("=")
            files.append((label, torch.load(path)))
    x = {k: v.double().numpy() for k, v in inputs().items()}
    refs = other_refs(x)
    for name, (key, fn, _mp) in UNARY_REF.items():
        refs[name] = fn(x[key])
    names = list(files[0][1]["results"])
    header = f"{'op':<18}" + "".join(f"{lab + ' vs exact':>24}" for lab, _ in files)
    header += "".join(f"{lab + '==' + files[0][0]:>22}" for lab, _ in files[1:])
    print(header)
    for name in names:
        if only and name not in only and not any(name.startswith(o) for o in only):
            continue
        row = f"{name:<18}"
        arrays = [f["results"][name].numpy() for _, f in files]
        for arr in arrays:
            if name in refs:
                mp_fn, inp = None, None
                if name in UNARY_REF:
                    key, _fn, mp_fn = UNARY_REF[name]
                    inp = x[key].astype(np.float32)
                elif name.startswith("sweep_"):
                    op = name.split("_")[1]
                    key, _fn, mp_fn = UNARY_REF[op]
                    inp = x[key].astype(np.float32)
                n_bad, max_ulp = check(name, arr, np.asarray(refs[name]), mp_fn, inp)
                row += f"{f'{n_bad}/{arr.size} ({max_ulp} ulp)':>24}"
            else:
                row += f"{'-':>24}"
        for arr in arrays[1:]:
            same = arr.shape == arrays[0].shape and bool(_same(arr, arrays[0]).all())
            n_diff = 0 if same else (int((~_same(arr, arrays[0])).sum()) if arr.shape == arrays[0].shape else -1)
            row += f"{'identical' if same else f'DIFF {n_diff}':>22}"
        print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
