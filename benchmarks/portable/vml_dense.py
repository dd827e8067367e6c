"""Dense cross-CPU check of the ops ATen hands to MKL's vector math (VML): a million inputs per function.

    python benchmarks/portable/vml_dense.py run OUT.pt [N]      (natively, then under qemu-x86_64-static -cpu Haswell)
    python benchmarks/portable/vml_dense.py compare A.pt B.pt

``run`` evaluates sqrt, log, log2, log10, exp, tanh, sin, cos, tan, atan, asin, acos, erf, erfc and erfinv on N float32
inputs (default 2**20) and N/8 float64 ones, drawn from torch's integer generator and scaled exactly, so the inputs
are the same bits on every CPU. With ``ENVKIT_CPU_PROFILE=portable`` it first installs ``envkit.injob.portable_ops``.
``compare`` prints, per function, how many results differ in any bit.
"""

from __future__ import annotations

import os
import sys

import torch

FUNCTIONS = ("sqrt", "log", "log2", "log10", "exp", "tanh", "sin", "cos", "tan", "atan", "asin", "acos", "erf",
             "erfc", "erfinv")


def run(out: str, n: int) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if os.environ.get("ENVKIT_CPU_PROFILE") == "portable":
        from envkit.injob import portable_ops

        portable_ops.install(torch)
    gen = torch.Generator().manual_seed(7)
    u = torch.randint(0, 1 << 31, (n,), generator=gen, dtype=torch.int64).double() / float(1 << 31)  # exact
    e = torch.randint(-60, 60, (n,), generator=gen, dtype=torch.int64)
    pos = ((1 + u) * torch.pow(2.0, e.double())).float()  # powers of two: exact

    def span(lo: float, hi: float) -> torch.Tensor:
        return (u * (hi - lo) + lo).float()

    domains = {
        "sqrt": pos, "log": pos, "log2": pos, "log10": pos, "exp": span(-87, 88), "tanh": span(-10, 10),
        "sin": span(-100, 100), "cos": span(-100, 100), "tan": span(-1.5, 1.5), "atan": span(-50, 50),
        "asin": span(-1, 1), "acos": span(-1, 1), "erf": span(-4, 4), "erfc": span(-4, 10), "erfinv": span(-1, 1),
    }
    results = {}
    for name in FUNCTIONS:
        x = domains[name]
        results[name] = getattr(torch, name)(x)
        results[name + "_f64"] = getattr(torch, name)(x[: n // 8].double())
    torch.save(results, out)


def compare(a_path: str, b_path: str) -> None:
    a, b = torch.load(a_path), torch.load(b_path)
    for name, x in a.items():
        y = b[name]
        bits = torch.int64 if x.dtype == torch.float64 else torch.int32
        differ = (x.view(bits) != y.view(bits)) & ~(x.isnan() & y.isnan())
        print(f"{name:12} {int(differ.sum()):8d} of {x.numel()} differ")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        run(argv[1], int(argv[2]) if len(argv) > 2 else 1 << 20)
    elif len(argv) == 3 and argv[0] == "compare":
        compare(argv[1], argv[2])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
