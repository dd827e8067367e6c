"""Compute a fixed set of torch CPU ops on fixed inputs and save every result's raw float32 bits.

Run it on each CPU (natively, and under ``qemu-x86_64-static -cpu Haswell``) with the environment under test, then
compare the files with ``ops_compare.py``, which also checks every result against a correctly rounded reference.

    python benchmarks/portable/ops_probe.py OUT.pt

With ``ENVKIT_CPU_PROFILE=portable`` in the environment it first installs ``envkit.injob.portable_ops``, as the
bootstrap does in a portable run.

The inputs come from Python's own Mersenne Twister and exact ``ldexp`` scaling, so they are the same bits on every
CPU without reading a file; the ops are the ones a small training touches plus the usual elementwise suspects.
"""

from __future__ import annotations

import math
import os
import random
import sys

import torch

N = 32768  # the size the issue measured; above every grain size in ATen's elementwise loops
SWEEP = (1, 7, 8, 15, 16, 31, 32, 64, 100, 255, 256, 1000, 2047, 2048, 2049, 4096, 8192, 32768)


def inputs(n: int = N, seed: int = 1234) -> dict[str, torch.Tensor]:
    """Fixed float32 inputs with bits that do not depend on the CPU (integer RNG, exact scaling)."""
    rng = random.Random(seed)

    def f32(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).to(torch.float32)

    # mantissa in [1, 2) times 2**e: positive values over 40 binades, no transcendental call involved
    pos = f32([math.ldexp(1.0 + rng.random(), rng.randrange(-20, 20)) for _ in range(n)])
    sym = f32([(rng.random() * 2.0 - 1.0) * 10.0 for _ in range(n)])
    unit = f32([rng.random() * 1.98 - 0.99 for _ in range(n)])
    small = f32([(rng.random() * 2.0 - 1.0) * 3.0 for _ in range(n)])
    # Adam-like second moments: squares of small gradients, some tiny
    grad = f32([(rng.random() * 2.0 - 1.0) * math.ldexp(1.0, rng.randrange(-14, 0)) for _ in range(n)])
    return {"pos": pos, "sym": sym, "unit": unit, "small": small, "grad": grad}


def unary_ops() -> dict[str, tuple[str, object]]:
    """name -> (input key, function)."""
    F = torch.nn.functional
    return {
        "sqrt": ("pos", torch.sqrt),
        "rsqrt": ("pos", torch.rsqrt),
        "reciprocal": ("pos", torch.reciprocal),
        "pow_0.5": ("pos", lambda x: torch.pow(x, 0.5)),
        "pow_-0.5": ("pos", lambda x: torch.pow(x, -0.5)),
        "pow_1.5": ("pos", lambda x: torch.pow(x, 1.5)),
        "pow_2": ("pos", lambda x: torch.pow(x, 2)),
        "pow_0.3": ("pos", lambda x: torch.pow(x, 0.3)),
        "log": ("pos", torch.log),
        "log2": ("pos", torch.log2),
        "log10": ("pos", torch.log10),
        "log1p": ("pos", torch.log1p),
        "exp": ("sym", torch.exp),
        "exp2": ("sym", torch.exp2),
        "expm1": ("sym", torch.expm1),
        "tanh": ("sym", torch.tanh),
        "sigmoid": ("sym", torch.sigmoid),
        "erf": ("small", torch.erf),
        "erfc": ("small", torch.erfc),
        "erfinv": ("unit", torch.erfinv),
        "sin": ("sym", torch.sin),
        "cos": ("sym", torch.cos),
        "tan": ("unit", torch.tan),
        "atan": ("sym", torch.atan),
        "asin": ("unit", torch.asin),
        "acos": ("unit", torch.acos),
        "sinh": ("small", torch.sinh),
        "cosh": ("small", torch.cosh),
        "atanh": ("unit", torch.atanh),
        "trunc": ("sym", torch.trunc),
        "gelu": ("sym", F.gelu),
        "gelu_tanh": ("sym", lambda x: F.gelu(x, approximate="tanh")),
        "silu": ("sym", F.silu),
        "softplus": ("sym", F.softplus),
        "elu": ("sym", F.elu),
        "logsigmoid": ("sym", F.logsigmoid),
        "sqrt_noncontig": ("pos", lambda x: torch.sqrt(x[::2])),
        "exp_noncontig": ("sym", lambda x: torch.exp(x[::2])),
        "sqrt_f64_round": ("pos", lambda x: torch.sqrt(x.double()).float()),
        # float64 results keep their 64 bits; the inputs get low bits a float32 does not have
        **{f"{op}_f64": (key, lambda x, op=op: getattr(torch, op)(x.double() * (1 + 2**-40)))
           for op, key in (("sqrt", "pos"), ("log", "pos"), ("log2", "pos"), ("log10", "pos"), ("exp", "sym"),
                           ("tanh", "sym"), ("tan", "unit"), ("atan", "sym"), ("asin", "unit"), ("acos", "unit"),
                           ("erf", "small"))},
        "foreach_sqrt": ("pos", lambda x: torch._foreach_sqrt([x])[0]),
        "foreach_exp": ("sym", lambda x: torch._foreach_exp([x])[0]),
        "cdist": ("small", lambda x: torch.cdist(x[:4096].reshape(64, 64), x[4096:8192].reshape(64, 64)).flatten()),
    }


def binary_ops(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    F = torch.nn.functional
    pos, sym, small, grad = x["pos"], x["sym"], x["small"], x["grad"]
    row = small.reshape(128, 256)
    sq = grad * grad
    return {
        "div": pos / sym,
        "mul": pos * sym,
        "add": pos + sym,
        "pow_tensor": torch.pow(pos, small),
        "atan2": torch.atan2(sym, small),
        "hypot": torch.hypot(sym, small),
        "addcdiv": torch.addcdiv(pos, sym, pos, value=-0.001),
        "addcmul": torch.addcmul(pos, sym, small, value=0.001),
        "lerp": torch.lerp(pos, sym, 0.1),
        "foreach_addcdiv": torch._foreach_addcdiv([pos], [sym], [pos], value=-0.001)[0],
        "foreach_addcmul": torch._foreach_addcmul([pos], [sym], [small], value=0.001)[0],
        "foreach_lerp": torch._foreach_lerp([pos], [sym], 0.1)[0],
        "sum": sym.sum().reshape(1),
        "mean_rows": row.mean(dim=1),
        "var_rows": row.var(dim=1),
        "norm": sym.norm().reshape(1),
        "cumsum": small.cumsum(0),
        "softmax": torch.softmax(row, dim=1).flatten(),
        "log_softmax": torch.log_softmax(row, dim=1).flatten(),
        "logsumexp": torch.logsumexp(row, dim=1),
        "layer_norm": F.layer_norm(row, (256,)).flatten(),
        "adam_denom": (sq.sqrt() / math.sqrt(1 - 0.999**3)).add_(1e-8),
    }


def adam_steps(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Three Adam steps on fixed params and grads, through each of the three implementations."""
    out = {}
    for impl in ("forloop", "foreach", "fused"):
        p = torch.nn.Parameter(x["small"].clone())
        kwargs = {"foreach": impl == "foreach", "fused": True if impl == "fused" else None}
        opt = torch.optim.Adam([p], lr=1e-3, **kwargs)
        for step in range(3):
            p.grad = x["grad"] * (step + 1)
            opt.step()
        out[f"adam_{impl}"] = p.detach().clone()
    return out


def linear_algebra(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    F = torch.nn.functional
    a = x["small"][: 64 * 512].reshape(64, 512)
    b = x["sym"][: 512 * 64].reshape(512, 64)
    img = x["small"][: 2 * 3 * 32 * 32].reshape(2, 3, 32, 32)
    w = x["unit"][: 8 * 3 * 3 * 3].reshape(8, 3, 3, 3)
    return {
        "matmul": (a @ b).flatten(),
        "conv2d": F.conv2d(img, w, padding=1).flatten(),
    }


def random_ops() -> dict[str, torch.Tensor]:
    """Seeded random draws: the generator is Philox/MT in ATen, but some kernels go through MKL on Intel only."""
    out = {}
    for name, fn in {
        "randn": lambda: torch.randn(4096),
        "rand": lambda: torch.rand(4096),
        "bernoulli_p": lambda: torch.empty(4096).bernoulli_(0.5),
        "dropout": lambda: torch.nn.functional.dropout(torch.ones(4096), 0.5),
        "randperm": lambda: torch.randperm(4096).float(),
    }.items():
        torch.manual_seed(0)
        out[name] = fn()
    return out


def size_sweep(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for n in SWEEP:
        out[f"sweep_sqrt_{n}"] = torch.sqrt(x["pos"][:n].clone())
        out[f"sweep_exp_{n}"] = torch.exp(x["sym"][:n].clone())
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):  # never save to a file named like an option
        print(__doc__)
        return 2
    threads = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(threads)
    if os.environ.get("ENVKIT_CPU_PROFILE") == "portable":
        from envkit.injob import portable_ops  # the override the bootstrap installs under the portable profile

        portable_ops.install(torch)
    x = inputs()
    results: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (key, fn) in unary_ops().items():
            results[name] = fn(x[key])
        results.update(binary_ops(x))
        results.update(linear_algebra(x))
        results.update(size_sweep(x))
    results.update(adam_steps(x))
    results.update(random_ops())
    meta = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("ATEN_", "ONEDNN_", "MKL_", "OMP_", "ENVKIT_"))},
    }
    torch.save({"meta": meta, "results": {k: v.contiguous() for k, v in results.items()}}, argv[0])
    print(meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
